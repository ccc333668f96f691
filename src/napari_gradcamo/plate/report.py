"""The plate report: one HTML file (PNG plots embedded, and also written beside it) from a plate run's folder,
rendered from the jinja2 template ``templates/report.html.j2``.

Every share and flag in it follows the run's own flag rule (``settings.flag_on`` and ``settings.threshold`` in
``run.json``, the rule :func:`napari_gradcamo.output.results.apply_threshold` applied to each cell): a cell is
*flagged* when its ``flag_on`` score is below the threshold or undefined; the *share not flagged* of a group is
1 − flagged / audited cells. The heatmaps are laid out on the plate's declared rows and columns (NGFF plate
metadata, recorded in ``run.json`` by ``gradcamo plate run``); plates without declared geometry use the smallest
standard plate (96, 384, 1536 wells) that holds every well.

Tables (also written as CSV beside the report): per treatment/dose, per well, and the failed fields. The numbers
in the HTML are exactly these tables, rounded to 3 decimals (``tests/plate/test_report.py`` checks every one).
"""

from __future__ import annotations

import base64
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_gradcamo.audit.scoring import SCORE_KINDS
from napari_gradcamo.output import results
from napari_gradcamo.plate import store
from napari_gradcamo.plate.verdict import read_plate_verdict

SCORE = "normalised"
SCORE_LABEL = "chance-corrected Grad-CAMO  (gradcamo − chance) / (1 − chance)"
#: (rows, columns) of the standard plate formats, smallest first.
PLATE_FORMATS = ((8, 12), (16, 24), (32, 48))
#: Digits shown for fractional numbers in the report (the CSV tables keep full precision).
DECIMALS = 3
TEMPLATE = "report.html.j2"


def _row_index(row: str) -> int:
    """A → 0 … Z → 25, AA → 26 … (1536-well plates)."""
    row = row.upper()
    return string.ascii_uppercase.index(row) if len(row) == 1 else 26 + string.ascii_uppercase.index(row[-1])


def split_well(well: str) -> tuple[int, int]:
    """(row index, column index) of a well id such as ``B02`` or ``AF48`` on a standard plate."""
    letters = "".join(c for c in well if c.isalpha())
    digits = "".join(c for c in well if c.isdigit())
    if not letters or not digits:
        raise ValueError(f"Well '{well}' is not a row letter and a column number (e.g. B02).")
    return _row_index(letters), int(digits) - 1


def row_names(n: int) -> list[str]:
    return [string.ascii_uppercase[i] if i < 26 else "A" + string.ascii_uppercase[i - 26] for i in range(n)]


@dataclass(frozen=True)
class PlateGeometry:
    """A plate's rows and columns, by name and in order (as NGFF plate metadata declares them)."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    declared: bool = True

    @classmethod
    def standard(cls, wells) -> "PlateGeometry":
        """The smallest standard plate that holds every well id (``B02`` …)."""
        positions = [split_well(str(w)) for w in wells]
        rows = max((r for r, _ in positions), default=0) + 1
        cols = max((c for _, c in positions), default=0) + 1
        shape = next(((r, c) for r, c in PLATE_FORMATS if rows <= r and cols <= c), (rows, cols))
        return cls(tuple(row_names(shape[0])), tuple(str(c + 1) for c in range(shape[1])), declared=False)

    def position(self, well: str) -> tuple[int, int] | None:
        """(row, column) index of ``well`` (row name followed by column name; ``A2`` matches column ``02``)."""
        letters = "".join(c for c in str(well) if c.isalpha()).upper()
        digits = "".join(c for c in str(well) if c.isdigit())
        rows = [r.upper() for r in self.rows]
        if letters not in rows:
            return None
        for j, column in enumerate(self.columns):
            if column == digits or (column.isdigit() and digits.isdigit() and int(column) == int(digits)):
                return rows.index(letters), j
        return None


def geometry_for(plate: str, wells, declared: dict | None) -> PlateGeometry:
    """The declared geometry of ``plate`` if it holds every well, else the smallest standard plate."""
    entry = (declared or {}).get(str(plate))
    if isinstance(entry, dict) and isinstance(entry.get("rows"), list) and isinstance(entry.get("columns"), list):
        geometry = PlateGeometry(tuple(str(r) for r in entry["rows"]), tuple(str(c) for c in entry["columns"]))
        if all(geometry.position(w) is not None for w in wells):
            return geometry
    return PlateGeometry.standard(wells)


def plate_grid(per_well: pd.Series, geometry: PlateGeometry | None = None) -> np.ndarray:
    """A value per well laid out on ``geometry`` (default: the smallest standard plate; NaN = no data)."""
    geometry = geometry or PlateGeometry.standard(per_well.index)
    grid = np.full((len(geometry.rows), len(geometry.columns)), np.nan)
    for well, value in per_well.items():
        r, c = geometry.position(str(well)) or split_well(str(well))
        grid[r, c] = value
    return grid


@dataclass(frozen=True)
class ReportRule:
    """The run's flag rule: a cell is flagged when ``on`` < ``threshold`` or undefined."""

    on: str
    threshold: float

    @classmethod
    def of_run(cls, run: dict) -> "ReportRule":
        from napari_gradcamo.audit.run import AuditSettings

        settings = run.get("settings") or {}
        default = AuditSettings()
        on = str(settings.get("flag_on") or default.flag_on)
        if on not in SCORE_KINDS:
            raise ValueError(f"run.json flags on {on!r}, which is not a score ({', '.join(SCORE_KINDS)}).")
        threshold = settings.get("threshold", default.threshold)
        return cls(on, float(default.threshold if threshold is None else threshold))

    def text(self) -> str:
        return f"{self.on} < {self.threshold:g} or undefined"


def flag_cells(table: pd.DataFrame, rule: ReportRule) -> pd.DataFrame:
    """The audited cells of ``table`` with ``flagged`` set by ``rule`` (the audit's own function)."""
    audited = table[table["status"] == results.STATUS_AUDITED] if "status" in table else table.assign(
        status=results.STATUS_AUDITED)
    if rule.on not in audited:
        raise ValueError(f"The plate table has no '{rule.on}' column to flag on; rerun 'gradcamo plate run'.")
    return results.apply_threshold(audited, rule.threshold, on=rule.on)


def _group_summary(flagged: pd.DataFrame, by: list[str], rule: ReportRule, cells: pd.Series) -> pd.DataFrame:
    groups = flagged.groupby(by, sort=True)
    out = pd.DataFrame({
        "audited": groups.size(),
        "undefined": groups[rule.on].apply(lambda s: int(s.isna().sum())),
        "flagged": groups["flagged"].sum().astype(int),
        "median_gradcamo": groups["gradcamo"].median(),
        "median_chance": groups["chance"].median(),
        "median_normalised": groups["normalised"].median(),
    })
    if rule.on not in ("gradcamo", "normalised"):
        out[f"median_{rule.on}"] = groups[rule.on].median()
    out["share_not_flagged"] = 1.0 - out["flagged"] / out["audited"]
    out.insert(0, "cells", cells.reindex(out.index).fillna(0).astype(int))
    return out.reset_index()


def treatment_summary(table: pd.DataFrame, rule: ReportRule) -> pd.DataFrame:
    """Per treatment and dose: cells, audited, undefined and flagged cells, medians of Grad-CAMO, chance and the
    chance-corrected score (and of the flag score), and the share of audited cells not flagged by ``rule``."""
    flagged = flag_cells(table, rule)
    return _group_summary(flagged, ["treatment", "dose"], rule, table.groupby(["treatment", "dose"]).size())


def well_summary(table: pd.DataFrame, rule: ReportRule) -> pd.DataFrame:
    """Per plate and well: the columns of :func:`treatment_summary`."""
    flagged = flag_cells(table, rule)
    return _group_summary(flagged, ["plate", "well"], rule, table.groupby(["plate", "well"]).size())


def _heatmap(ax, grid: np.ndarray, geometry: PlateGeometry, title: str, cmap: str, vmin=None, vmax=None) -> None:
    import matplotlib

    colours = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=vmin, vmax=vmax)
    rows, cols = grid.shape
    step = 1 if cols <= 24 else 2
    ax.set_xticks(range(0, cols, step), [geometry.columns[c] for c in range(0, cols, step)], fontsize=7)
    ax.set_yticks(range(rows), list(geometry.rows), fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def _boxplot(ax, table: pd.DataFrame, by: list[str], title: str) -> None:
    groups = [(" / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))), g[SCORE].dropna().to_numpy())
              for key, g in table.groupby(by, sort=True)]
    groups = [(name, values) for name, values in groups if values.size]
    if groups:
        ax.boxplot([v for _, v in groups], showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups], rotation=45, ha="right", fontsize=7)
        for i, (_, values) in enumerate(groups, start=1):
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, values.size)
            ax.plot(i + jitter, values, ".", ms=2, alpha=0.3, color="k")
    ax.axhline(0.0, color="r", lw=0.8, ls="--")
    ax.set_ylabel("chance-corrected Grad-CAMO", fontsize=8)
    ax.set_title(title, fontsize=9)


def _save(fig, folder: Path, name: str) -> tuple[str, str]:
    """Write ``fig`` as ``folder/name.png`` (atomically); return (file name, base64 PNG)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    data = buffer.getvalue()
    store.atomic_write(folder / f"{name}.png", lambda p: p.write_bytes(data))
    return f"{name}.png", base64.b64encode(data).decode()


def make_figures(table: pd.DataFrame, wells: pd.DataFrame, geometries: dict[str, PlateGeometry], rule: ReportRule,
                 folder: Path) -> list[dict]:
    """Every plot of the report as ``{"caption", "file", "png"}`` (base64); the heatmaps draw ``wells``
    (:func:`well_summary`) on each plate's geometry."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figures = []
    scored = table.dropna(subset=["gradcamo"])
    for plate, per_well in wells.groupby("plate", sort=True):
        geometry = geometries[str(plate)]
        values = per_well.set_index("well")
        fig, axes = plt.subplots(1, 3, figsize=(18, 4.2))
        _heatmap(axes[0], plate_grid(values["median_normalised"], geometry), geometry,
                 f"{plate}: median chance-corrected Grad-CAMO", "viridis")
        _heatmap(axes[1], plate_grid(values["share_not_flagged"], geometry), geometry,
                 f"{plate}: share of cells not flagged ({rule.on} ≥ {rule.threshold:g})", "magma", 0, 1)
        _heatmap(axes[2], plate_grid(values["cells"].astype(float), geometry), geometry, f"{plate}: cells per well",
                 "Blues")
        figures.append({"caption": f"Plate {plate} ({len(geometry.rows)} × {len(geometry.columns)} wells)",
                        **dict(zip(("file", "png"), _save(fig, folder, f"plate_{store.safe_name(str(plate))}")))})
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    _boxplot(axes[0], scored, ["treatment", "dose"], "per treatment / dose")
    _boxplot(axes[1], scored, ["site"], "per site")
    figures.append({"caption": "Distributions (red line: chance)",
                    **dict(zip(("file", "png"), _save(fig, folder, "distributions")))})
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    per_field = table.groupby("field").size()
    ax.hist(per_field.to_numpy(), bins=min(30, max(5, per_field.size // 2)), color="#4477aa")
    ax.set_xlabel("cells per field", fontsize=8)
    ax.set_ylabel("fields", fontsize=8)
    ax.set_title("cells per field", fontsize=9)
    figures.append({"caption": "Cells per field (the counts are in the per-well table)",
                    **dict(zip(("file", "png"), _save(fig, folder, "cells_per_field")))})
    plt.close(fig)
    return figures


def _cell(value) -> str:
    """A table value as the report shows it: whole numbers as they are, fractions with :data:`DECIMALS` digits."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else f"{float(value):.{DECIMALS}f}"
    return str(value)


def _rows(table: pd.DataFrame) -> dict:
    return {"columns": [str(c) for c in table.columns],
            "rows": [[_cell(v) for v in row] for row in table.itertuples(index=False, name=None)]}


def declared_geometries(run: dict) -> dict:
    """The plates' declared rows and columns: from ``run.json`` (``plates``), else read from the run's source."""
    if isinstance(run.get("plates"), dict):
        return run["plates"]
    from napari_gradcamo.plate.sources import plate_geometry

    try:
        return plate_geometry(run.get("source") or "")
    except Exception:  # noqa: BLE001 - a moved or unreadable source only costs the declared layout
        return {}


def report_data(out: str | Path, folder: Path | None = None) -> dict:
    """Everything the template shows, from the run folder ``out`` (figures are written to ``folder``).

    Returns
    -------
    dict
        ``run`` (provenance), ``rule``, ``counts``, ``treatments`` / ``wells`` / ``failures`` (tables as
        ``{"columns", "rows"}`` of display strings, plus the frames under ``frames``), ``figures``, ``written``
        and ``verdict``: the model-level verdict of ``OUT/verdict.json`` (:mod:`napari_gradcamo.plate.verdict`),
        ``None`` when the run has none.
    """
    out = Path(out)
    run = store.read_run(out)
    rule = ReportRule.of_run(run)
    table, failures = store.collect(out, run["fingerprint"])
    written = store.write_plate_table(out, table, run)
    settings = run.get("settings") or {}
    data = {
        "run": {"checkpoint": str(run.get("checkpoint")), "sha": str(run.get("checkpoint_sha256", ""))[:12],
                "source": str(run.get("source")), "method": str(settings.get("method")),
                "layer": str(settings.get("target_layer") or "default")},
        "rule": {"on": rule.on, "threshold": f"{rule.threshold:g}", "meaning": SCORE_KINDS[rule.on]},
        "score_label": SCORE_LABEL,
        "written": written,
        # the model-level verdict judged at the end of the run (plate/verdict.py); the template shows it first
        "verdict": read_plate_verdict(out),
        "figures": [],
        "frames": {},
    }
    audited = flag_cells(table, rule) if len(table) else table
    data["counts"] = {
        "cells": int(len(table)),
        "audited": int(len(audited)),
        "flagged": int(audited["flagged"].sum()) if len(audited) else 0,
        "undefined": int(audited[rule.on].isna().sum()) if len(audited) else 0,
        "fields_scored": int(table["field"].nunique()) if len(table) else 0,
        "fields": int(run.get("fields") or 0),
        "failed": int(len(failures)),
    }
    data["failures"] = _rows(failures)
    data["frames"]["failures"] = failures
    if len(table):
        treatments = treatment_summary(table, rule)
        wells = well_summary(table, rule)
        declared = declared_geometries(run)
        geometries = {str(p): geometry_for(str(p), w["well"], declared) for p, w in wells.groupby("plate")}
        data["treatments"], data["wells"] = _rows(treatments), _rows(wells)
        data["frames"].update(treatments=treatments, wells=wells)
        data["geometry"] = {p: {"rows": len(g.rows), "columns": len(g.columns), "declared": g.declared}
                            for p, g in geometries.items()}
        if folder is not None:
            data["figures"] = make_figures(table, wells, geometries, rule, folder)
    return data


def render(data: dict) -> str:
    """The report's HTML from :func:`report_data`'s dict (jinja2, autoescaped)."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("napari_gradcamo.plate", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    return environment.get_template(TEMPLATE).render(**data)


def write_report(out: str | Path) -> Path:
    """Assemble the plate table of the run in ``out`` (Parquet + AnnData) and write ``out/report/report.html``
    with its tables as CSV beside it (``treatments.csv``, ``wells.csv``)."""
    from napari_gradcamo.io.atomic import write_with

    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    data = report_data(out, folder)
    for name in ("treatments", "wells"):
        if name in data["frames"]:
            frame = data["frames"][name]
            write_with(folder / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False))
    page = render(data)
    return store.atomic_write(folder / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
