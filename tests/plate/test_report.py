"""The plate report: shares and flags follow the run's own flag rule, the heatmap grid is the plate's declared
geometry, and every number on the rendered page equals the tables it came from (the page is parsed)."""

import re
from dataclasses import asdict
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.audit.scoring import SCORE_KINDS
from napari_gradcamo.io.ome_zarr import write_plate
from napari_gradcamo.output import results
from napari_gradcamo.plate import store
from napari_gradcamo.plate.report import SCORE_LABEL, PlateGeometry, plate_grid, report_data, write_report
from napari_gradcamo.plate.sources import FieldTask, plate_geometry

ROWS, COLUMNS = ["A", "B"], ["01", "02", "03"]


class _Page(HTMLParser):
    """Tables (by id) as lists of rows of cell text, the ``<dl>`` pairs, and the loose text outside them."""

    def __init__(self):
        super().__init__()
        self.tables, self.pairs, self.loose, self.codes = {}, {}, [], []
        self._table = self._row = self._cell = None
        self._dt = self._dd = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "dt":
            self._dt = []
        elif tag == "dd":
            self._dd = []
        elif tag in ("code", "style", "title"):
            self._skip += 1
            if tag == "code":
                self.codes.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "dt":
            self._key, self._dt = "".join(self._dt).strip(), None
        elif tag == "dd":
            self.pairs[self._key], self._dd = "".join(self._dd).strip(), None
        elif tag in ("code", "style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        for target in (self._cell, self._dt, self._dd):
            if target is not None:
                target.append(data)
                return
        if self._skip and self.lasttag == "code":
            self.codes[-1] += data
        elif not self._skip:
            self.loose.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows[1:], columns=rows[0])


def _make_run(tmp_path, settings: AuditSettings, *, declared=True):
    """A run folder written with the plate store's own writers: a 2 × 3 OME-Zarr plate (B02 left empty),
    2 sites per well, 25 cells per field with some undefined scores, and one failed field."""
    records = [{"row": r, "column": c, "image": np.zeros((1, 1, 4, 4), np.uint16), "channel_names": ["DNA"],
                "voxel_size": (1.0, 1.0, 1.0)} for r in ROWS for c in COLUMNS]
    source = write_plate(tmp_path / "P1.ome.zarr", "P1", records)
    out = tmp_path / "out"
    run = "run-fingerprint"
    rng = np.random.default_rng(7)
    tasks = [FieldTask("P1", f"{r}{c}", s, str(source), "", ["control", "treated"][j % 2], str(j % 3))
             for j, (r, c) in enumerate((r, c) for r in ROWS for c in COLUMNS) for s in (1, 2)]
    failed = next(t for t in tasks if t.well == "B02" and t.site == 2)
    for i, task in enumerate(t for t in tasks if t.well != "B02" or t is failed):
        if task is failed:
            store.write_failure(out, task, "f", run, "ImageError: unreadable")
            continue
        n = 25
        chance = rng.uniform(0.05, 0.3, n)
        gradcamo = np.clip(chance + rng.normal(0.05 * (i % 4), 0.15, n), 0, 1)
        gradcamo[rng.random(n) < 0.08] = np.nan
        table = results.conform(pd.DataFrame({
            "label": np.arange(1, n + 1), "gradcamo": gradcamo, "chance": chance, "lift": gradcamo / chance,
            "normalised": (gradcamo - chance) / (1 - chance), "status": results.STATUS_AUDITED}), ["a", "b"])
        table = results.apply_threshold(table, settings.threshold, on=settings.flag_on).assign(**task.metadata())
        store.write_field(out, task, "f", run, table, [])
    store.write_run(out, {"fingerprint": run, "checkpoint": "model.pt", "checkpoint_sha256": "ab" * 32,
                          "source": str(source), "settings": asdict(settings), "fields": len(tasks) - 1,
                          **({"plates": plate_geometry(source)} if declared else {"source": str(tmp_path / "gone")})})
    return out, source


def _expected(plate: pd.DataFrame, by: list[str], on: str, threshold: float) -> pd.DataFrame:
    """The report's summary computed independently of the report module: flag = score < t or undefined."""
    cells = plate.assign(low=plate[on].isna() | (plate[on] < threshold))
    rows = []
    for key, g in cells.groupby(by, sort=True):
        rows.append({**dict(zip(by, key)), "cells": len(g), "audited": len(g), "undefined": int(g[on].isna().sum()),
                     "flagged": int(g["low"].sum()), "median_gradcamo": g["gradcamo"].median(),
                     "median_chance": g["chance"].median(), "median_normalised": g["normalised"].median(),
                     **({"median_lift": g["lift"].median()} if on == "lift" else {}),
                     "share_not_flagged": 1 - g["low"].mean()})
    return pd.DataFrame(rows)


def _assert_same(shown: pd.DataFrame, expected: pd.DataFrame) -> int:
    """Every cell on the page equals the expected table (fractions to the 3 shown decimals); returns how many."""
    assert list(shown.columns) == list(expected.columns)
    assert len(shown) == len(expected)
    checked = 0
    for column in expected.columns:
        for text, value in zip(shown[column], expected[column]):
            if isinstance(value, (float, np.floating)) and not float(value).is_integer() or column.startswith(
                    ("median_", "share_")):
                assert text == ("–" if np.isnan(value) else f"{value:.3f}"), (column, text, value)
            else:
                assert text == str(value), (column, text, value)
            checked += 1
    return checked


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


@pytest.mark.parametrize("flag_on, threshold", [("normalised", 0.1), ("gradcamo", 0.5), ("lift", 1.5)])
def test_every_number_on_the_report_equals_its_table_and_follows_the_runs_flag_rule(tmp_path, flag_on, threshold):
    settings = AuditSettings(flag_on=flag_on, threshold=threshold)
    out, _ = _make_run(tmp_path, settings)
    page = _parse(write_report(out).read_text())
    plate = pd.read_parquet(out / store.PLATE_TABLE).astype({"plate": str, "well": str})

    # the bug: shares compared raw Grad-CAMO with the threshold of another score; now the run's rule decides
    treatments = _expected(plate, ["treatment", "dose"], flag_on, threshold)
    wells = _expected(plate, ["plate", "well"], flag_on, threshold)
    assert 0 < wells["share_not_flagged"].min() < wells["share_not_flagged"].max() < 1
    stored_flag = plate.groupby(["plate", "well"])["flagged"].sum().to_numpy()
    np.testing.assert_array_equal(wells["flagged"].to_numpy(), stored_flag)  # the audit's own flags

    checked = _assert_same(_frame(page.tables["treatments"]), treatments.astype({"dose": str}))
    checked += _assert_same(_frame(page.tables["wells"]), wells)
    failures = _frame(page.tables["failures"])
    assert failures[["field", "well", "site"]].values.tolist() == [["P1/B02/2", "B02", "2"]]
    counts = {"cells": len(plate), "audited cells": len(plate), "flagged cells": int(wells["flagged"].sum()),
              "undefined scores": int(plate[flag_on].isna().sum()), "fields with cells": plate["field"].nunique(),
              "fields in the run": 11, "failed fields": 1}
    assert page.pairs == {k: str(v) for k, v in counts.items()}
    assert checked == len(treatments) * treatments.shape[1] + len(wells) * wells.shape[1]

    # the rule shown is the run's; numbers outside the tables: the fixed prose explaining the scores (its
    # formulas), the "1" of "1 − flagged / audited cells" and the plate's declared 2 × 3 in the heatmap caption
    assert page.codes[5:7] == [flag_on, f"{threshold:g}"]
    prose = NUMBER.findall(SCORE_KINDS[flag_on] + SCORE_LABEL)
    loose = NUMBER.findall(" ".join(page.loose))
    assert sorted(loose) == sorted(prose + ["1", "2", "3"]), loose


def test_the_heatmap_grid_is_the_plates_declared_rows_and_columns(tmp_path):
    out, source = _make_run(tmp_path, AuditSettings())
    data = report_data(out)
    assert data["geometry"] == {"P1": {"rows": 2, "columns": 3, "declared": True}}
    wells = data["frames"]["wells"].set_index("well")
    geometry = PlateGeometry(tuple(ROWS), tuple(COLUMNS))
    grid = plate_grid(wells["share_not_flagged"], geometry)
    assert grid.shape == (2, 3)
    assert np.isnan(grid[1, 1])  # B02: its only field with cells failed
    assert grid[0, 2] == wells.loc["A03", "share_not_flagged"]
    assert data["verdict"] is None  # the model-level verdict's place (audit/verdict.py) is left open

    # a run folder without recorded geometry reads it from the plate; an unreadable source falls back to 96 wells
    moved, _ = _make_run(tmp_path / "moved", AuditSettings(), declared=False)
    assert report_data(moved)["geometry"] == {"P1": {"rows": 8, "columns": 12, "declared": False}}


def test_a_run_with_an_unknown_flag_score_is_refused_by_name(tmp_path):
    out, _ = _make_run(tmp_path, AuditSettings())
    record = store.read_run(out)
    record["settings"]["flag_on"] = "bogus"
    store.write_run(out, record)
    with pytest.raises(ValueError, match="bogus"):
        write_report(out)
