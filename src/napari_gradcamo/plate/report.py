"""The plate report: one HTML file (PNG plots embedded, and also written beside it) from a plate run's folder.

Plots: per plate, the median chance-corrected Grad-CAMO per well and the share of cells at or above the
threshold per well (plate layout heatmaps); distributions per treatment/dose and per site; cells per field.
Tables: per treatment/dose summary and the failed fields with their reasons.
"""

from __future__ import annotations

import base64
import html
import string
from pathlib import Path

import numpy as np
import pandas as pd

from napari_gradcamo.plate import store

SCORE = "normalised"
SCORE_LABEL = "chance-corrected Grad-CAMO  (gradcamo − chance) / (1 − chance)"
#: (rows, columns) of the standard plate formats, smallest first.
PLATE_FORMATS = ((8, 12), (16, 24), (32, 48))


def _row_index(row: str) -> int:
    """A → 0 … Z → 25, AA → 26 … (1536-well plates)."""
    row = row.upper()
    return string.ascii_uppercase.index(row) if len(row) == 1 else 26 + string.ascii_uppercase.index(row[-1])


def split_well(well: str) -> tuple[int, int]:
    """(row index, column index) of a well id such as ``B02`` or ``AF48``."""
    letters = "".join(c for c in well if c.isalpha())
    digits = "".join(c for c in well if c.isdigit())
    if not letters or not digits:
        raise ValueError(f"Well '{well}' is not a row letter and a column number (e.g. B02).")
    return _row_index(letters), int(digits) - 1


def plate_grid(per_well: pd.Series) -> np.ndarray:
    """A value per well laid out on the smallest standard plate that holds every well (NaN = no data)."""
    positions = {w: split_well(str(w)) for w in per_well.index}
    rows = max((r for r, _ in positions.values()), default=0) + 1
    cols = max((c for _, c in positions.values()), default=0) + 1
    shape = next(((r, c) for r, c in PLATE_FORMATS if rows <= r and cols <= c), (rows, cols))
    grid = np.full(shape, np.nan)
    for well, (r, c) in positions.items():
        grid[r, c] = per_well[well]
    return grid


def row_names(n: int) -> list[str]:
    return [string.ascii_uppercase[i] if i < 26 else "A" + string.ascii_uppercase[i - 26] for i in range(n)]


def _heatmap(ax, grid: np.ndarray, title: str, cmap: str, vmin=None, vmax=None) -> None:
    import matplotlib

    colours = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=vmin, vmax=vmax)
    rows, cols = grid.shape
    step = 1 if cols <= 24 else 2
    ax.set_xticks(range(0, cols, step), [str(c + 1) for c in range(0, cols, step)], fontsize=7)
    ax.set_yticks(range(rows), row_names(rows), fontsize=7)
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


def make_figures(table: pd.DataFrame, threshold: float, folder: Path) -> list[tuple[str, str, str]]:
    """Every plot of the report as (caption, file name, base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figures = []
    scored = table.dropna(subset=["gradcamo"])
    for plate, cells in table.groupby("plate"):
        ok = scored[scored["plate"] == plate]
        fig, axes = plt.subplots(1, 3, figsize=(18, 4.2))
        _heatmap(axes[0], plate_grid(ok.groupby("well")[SCORE].median()), f"{plate}: median chance-corrected Grad-CAMO",
                 "viridis")
        _heatmap(axes[1], plate_grid(ok.groupby("well")["gradcamo"].apply(lambda s: float((s >= threshold).mean()))),
                 f"{plate}: share of cells with Grad-CAMO ≥ {threshold:g}", "magma", 0, 1)
        _heatmap(axes[2], plate_grid(cells.groupby("well").size().astype(float)), f"{plate}: cells per well", "Blues")
        figures.append((f"Plate {plate}", *_save(fig, folder, f"plate_{store.safe_name(str(plate))}")))
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    _boxplot(axes[0], scored, ["treatment", "dose"], "per treatment / dose")
    _boxplot(axes[1], scored, ["site"], "per site")
    figures.append(("Distributions (red line: chance)", *_save(fig, folder, "distributions")))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    per_field = table.groupby("field").size()
    ax.hist(per_field.to_numpy(), bins=min(30, max(5, per_field.size // 2)), color="#4477aa")
    ax.set_xlabel("cells per field", fontsize=8)
    ax.set_ylabel("fields", fontsize=8)
    ax.set_title(f"cells per field (median {per_field.median():.0f}, min {per_field.min()}, max {per_field.max()})",
                 fontsize=9)
    figures.append(("Cells per field", *_save(fig, folder, "cells_per_field")))
    plt.close(fig)
    return figures


def treatment_summary(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per treatment and dose: cells, undefined scores, median Grad-CAMO, chance, chance-corrected score and the
    share of cells at or above ``threshold``."""
    groups = table.groupby(["treatment", "dose"], sort=True)
    return pd.DataFrame({
        "cells": groups.size(),
        "undefined": groups["gradcamo"].apply(lambda s: int(s.isna().sum())),
        "median_gradcamo": groups["gradcamo"].median(),
        "median_chance": groups["chance"].median(),
        "median_normalised": groups[SCORE].median(),
        f"share_ge_{threshold:g}": groups["gradcamo"].apply(lambda s: float((s.dropna() >= threshold).mean())
                                                            if s.notna().any() else float("nan")),
    }).reset_index()


def write_report(out: str | Path) -> Path:
    """Assemble the plate table of the run in ``out`` (Parquet + AnnData) and write ``out/report/report.html``."""
    out = Path(out)
    run = store.read_run(out)
    table, failures = store.collect(out, run["fingerprint"])
    written = store.write_plate_table(out, table)
    threshold = float(run.get("settings", {}).get("threshold", 0.5))
    folder = out / "report"
    folder.mkdir(exist_ok=True)
    parts = [f"<h1>Grad-CAMO plate report</h1><p>Checkpoint <code>{html.escape(str(run.get('checkpoint')))}</code>"
             f" (sha256 {html.escape(str(run.get('checkpoint_sha256', ''))[:12])}…), source "
             f"<code>{html.escape(str(run.get('source')))}</code>; method {html.escape(str(run['settings'].get('method')))}, "
             f"layer {html.escape(str(run['settings'].get('target_layer') or 'default'))}.</p>",
             f"<p>{len(table)} cells in {table['field'].nunique() if len(table) else 0} fields; "
             f"{len(failures)} failed field(s) of {run.get('fields')}. Score: {html.escape(SCORE_LABEL)}; "
             f"0 = no better than a uniform map, 1 = all attention on the cell.</p>",
             "<p>Tables: " + ", ".join(f"{k}: <code>{html.escape(v)}</code>" for k, v in written.items()) + "</p>"]
    if len(table):
        parts.append("<h2>Per treatment / dose</h2>" + treatment_summary(table, threshold).to_html(
            index=False, float_format=lambda v: f"{v:.3f}"))
        for caption, name, data in make_figures(table, threshold, folder):
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Failed fields</h2>" + (failures.to_html(index=False) if len(failures) else "<p>None.</p>"))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Grad-CAMO plate report</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:auto} img{max-width:100%} "
            "table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ccc;padding:2px 6px}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    return store.atomic_write(folder / "report.html", lambda p: p.write_text(page, encoding="utf-8"))
