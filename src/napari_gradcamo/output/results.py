"""The per-cell results table: one stable, documented schema for CLI, napari features and export."""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

#: Scores a flag threshold can be set on: column → what it means.
SCORE_KINDS = {
    "gradcamo": "raw Grad-CAMO: share of the attention on the cell (the paper's score; depends on cell size)",
    "lift": "Grad-CAMO / chance: 1 = as much as a uniform map gives the cell",
    "normalised": "(Grad-CAMO − chance) / (1 − chance): 0 = uniform map, 1 = all attention on the cell",
}

#: ``reason`` of a cell whose map is zero everywhere: evidence about the method (no positive evidence to
#: place), not about the model — such a cell is not flagged (:func:`apply_threshold`).
ZERO_MAP_REASON = "the Grad-CAM map is zero everywhere (no positive evidence)"


#: Column → meaning. ``prob_<class>`` columns (one per model class) follow ``probability``.
SCHEMA: dict[str, str] = {
    "label": "cell id in the label image",
    "centroid_z": "cell centroid, z (voxels)",
    "centroid_y": "cell centroid, y (voxels)",
    "centroid_x": "cell centroid, x (voxels)",
    "volume_voxels": "cell volume in voxels",
    "touches_border": "the cell's crop reaches past the image border (zero-padded)",
    "pieces": "separate connected pieces of the cell's mask (> 1: one id on several objects; check the labels)",
    "padded_fraction": "fraction of the crop that lies outside the image",
    "predicted_class": "class the model predicts for the crop",
    "probability": "softmax probability of the predicted class",
    "target_class": "class whose Grad-CAM was computed",
    "gradcamo": "Σcam·M/Σcam: share of attention on the cell itself (0..1, NaN if undefined)",
    "chance": "|M|/|crop|: the Grad-CAMO of a uniform map",
    "lift": "gradcamo/chance: 1 = no more attention on the cell than a uniform map gives it",
    "normalised": "(gradcamo − chance)/(1 − chance): 0 = uniform map, 1 = all attention on the cell, < 0 = avoided",
    "neighbour_share": "share of attention on other cells",
    "background_share": "share of attention on background inside the image",
    "outside_share": "share of attention on padding beyond the image border",
    "reason": "why gradcamo is NaN ('' when defined)",
    "flagged": "the score chosen to flag on (flag_on) below the threshold, undefined (except a map zero with every "
               "method: no evidence is not a flag), or flagged by hand",
    "drop_cell_occluded": "drop in the target class's probability when the cell is replaced by background "
                          "(NaN unless occlusion was asked for)",
    "drop_context_occluded": "drop in the target class's probability when everything but the cell is replaced "
                             "by background (NaN unless occlusion was asked for)",
    "status": "'audited', or 'not audited' for cells without a result yet",
    "cam_method": "CAM method",
    "map_method": "CAM method whose map was scored: cam_method, or a fallback (hirescam, gradcam++, layercam) from "
                  "the same pass when cam_method's map was zero everywhere; '' when every map was zero",
    "target_layer": "layer the CAM was computed at",
}
PROBABILITY_PREFIX = "prob_"
STATUS_AUDITED = "audited"
STATUS_NOT_AUDITED = "not audited"


def column_order(class_names: Sequence[str]) -> list[str]:
    """Schema columns with one ``prob_<class>`` column per class after ``probability``."""
    cols = list(SCHEMA)
    at = cols.index("probability") + 1
    return cols[:at] + [PROBABILITY_PREFIX + c for c in class_names] + cols[at:]


def empty_table(class_names: Sequence[str]) -> pd.DataFrame:
    """A zero-row table with the full schema and stable dtypes."""
    table = pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in column_order(class_names)})
    return table


#: text columns of the schema (object dtype, '' when empty)
TEXT_COLUMNS = ("predicted_class", "target_class", "reason", "status", "cam_method", "target_layer", "map_method")


def _dtype(column: str) -> str:
    if column in ("label", "volume_voxels", "pieces"):
        return "int64"
    if column in ("touches_border", "flagged"):
        return "bool"
    if column in TEXT_COLUMNS:
        return "object"
    return "float64"


def conform(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Order columns as the schema says, add missing ones (NaN / ''), keep extra columns at the end."""
    cols = column_order(class_names)
    out = table.copy()
    for c in cols:
        if c not in out:
            out[c] = "" if _dtype(c) == "object" else (False if _dtype(c) == "bool" else np.nan)
    extra = [c for c in out.columns if c not in cols]
    return out[cols + extra].reset_index(drop=True)


def apply_threshold(table: pd.DataFrame, threshold: float, manual: pd.Series | None = None,
                    on: str = "gradcamo") -> pd.DataFrame:
    """Set ``flagged``: the score ``on`` (gradcamo, lift or normalised) under ``threshold`` or undefined
    (audited cells only), or ``manual``. A map zero everywhere (with every fallback method) is not a flag:
    it says the method found no evidence, not where the model looks. A threshold that is not a finite number
    raises ``ValueError``."""
    if not isinstance(on, str) or on not in SCORE_KINDS:
        raise ValueError(f"Cannot flag on {on!r}; choose one of {', '.join(SCORE_KINDS)}.")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold {threshold!r} must be a finite number (a NaN threshold would flag no cell); "
                         "e.g. 0.0 for normalised, 1.0 for lift, 0.5 for gradcamo.")
    if not isinstance(table, pd.DataFrame) or any(c not in table for c in ("status", on)):
        raise ValueError(f"apply_threshold needs a results table (pandas DataFrame) with 'status' and {on!r} "
                         "columns, as run_audit returns (see napari_gradcamo.output.results.SCHEMA).")
    if manual is not None and not isinstance(manual, pd.Series):
        raise ValueError(f"manual must be a pandas Series of booleans indexed like the table, got "
                         f"{type(manual).__name__}.")
    audited = table["status"] == STATUS_AUDITED
    no_evidence = table["reason"].astype(str).str.startswith(ZERO_MAP_REASON) if "reason" in table else False
    low = (table[on].isna() & ~no_evidence) | (table[on] < threshold)
    flagged = audited & low
    if manual is not None:
        flagged = flagged | manual.reindex(table.index, fill_value=False).astype(bool)
    table = table.copy()
    table["flagged"] = flagged.astype(bool)
    return table


#: Key of the run record in the Parquet file's schema metadata.
RUN_RECORD_KEY = b"napari_gradcamo.run"


def table_paths(out_dir: str | Path, stem: str) -> tuple[Path, Path, Path]:
    """The CSV, Parquet and run-record JSON paths of a table called ``stem`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / f"{stem}.csv", out_dir / f"{stem}.parquet", out_dir / f"{stem}.run.json"


def write_table(table: pd.DataFrame, out_dir: str | Path, stem: str = "gradcamo", record: dict | None = None
                ) -> tuple[Path, Path]:
    """Write the table as CSV and Parquet (and ``record``, the run's provenance, as JSON beside them and in
    the Parquet metadata), all from this one call: every file goes to a temporary first and all are renamed
    into place together, so a failure (disk full, interrupt) leaves any previous files untouched.

    Parameters
    ----------
    table : pandas.DataFrame
        A results table (``AuditResult.table``).
    out_dir : str or Path
        The folder (created when missing).
    stem : str
        File name without suffix: ``<stem>.csv``, ``<stem>.parquet``, ``<stem>.run.json``.
    record : dict, optional
        The run record (``AuditResult.record``); read it back with :func:`read_run_record`.

    Returns
    -------
    tuple of Path
        The CSV and the Parquet file.

    Examples
    --------
    >>> import pandas as pd, napari_gradcamo as ng
    >>> table = pd.DataFrame({"label": [1, 2], "gradcamo": [0.4, 0.1]})
    >>> csv, parquet = ng.write_table(table, "results", "field_gradcamo")
    >>> csv.name, parquet.name
    ('field_gradcamo.csv', 'field_gradcamo.parquet')
    >>> pd.read_csv(csv)["gradcamo"].tolist()
    [0.4, 0.1]
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from napari_gradcamo.io.atomic import write_group

    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"table must be a pandas DataFrame (e.g. run_audit(...).table), not {type(table).__name__}.")
    if not isinstance(stem, str) or not stem or stem in (".", "..") or Path(stem).name != stem or "\\" in stem \
            or "\0" in stem:
        raise ValueError(f"stem {stem!r} must be a plain file name (no folder, no '..'), e.g. 'gradcamo'; choose the "
                         "folder with out_dir.")
    if record is not None and not isinstance(record, dict):
        raise ValueError(f"record must be a run record (a dict, e.g. run_audit(...).record) or None, not "
                         f"{type(record).__name__}.")
    try:
        arrow = pa.Table.from_pandas(table, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as error:
        raise ValueError(f"The table cannot be stored as Parquet ({type(error).__name__}: {error}); give each column "
                         "one type (e.g. table[column].astype(str)).") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, parquet, record_path = table_paths(out_dir, stem)
    writers = [(csv, lambda p: table.to_csv(p, index=False))]
    if record is not None:
        text = json.dumps(record, indent=2, default=str)
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), RUN_RECORD_KEY: text.encode()})
        writers.append((record_path, lambda p: Path(p).write_text(text, encoding="utf-8")))
    writers.insert(1, (parquet, lambda p: pq.write_table(arrow, p)))
    write_group(writers)
    return csv, parquet


def read_run_record(path: str | Path) -> dict | None:
    """The run record of a table: from a Parquet file's metadata, or the ``.run.json`` beside a CSV."""
    import json

    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        text = (pq.read_schema(path).metadata or {}).get(RUN_RECORD_KEY)
        return json.loads(text) if text else None
    sidecar = path.with_name(path.stem + ".run.json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None


def summary(table: pd.DataFrame) -> dict[str, float]:
    """Headline numbers of an audit: cells, medians of every score and of chance, share above chance,
    flagged cells and the share not flagged (above the threshold)."""
    audited = table[table["status"] == STATUS_AUDITED]
    n = int(len(audited))
    if n == 0:
        nan = float("nan")
        return {"cells": 0, "median_gradcamo": nan, "median_chance": nan, "median_lift": nan,
                "median_normalised": nan, "share_above_chance": nan, "share_above_threshold": nan,
                "flagged": 0, "undefined": 0}
    return {
        "cells": n,
        **{f"median_{c}": float(audited[c].median()) if c in audited else float("nan")
           for c in ("gradcamo", "chance", "lift", "normalised")},
        "share_above_chance": float((audited["gradcamo"] > audited["chance"]).mean()),
        "share_above_threshold": float((~audited["flagged"].astype(bool)).mean()),
        "flagged": int(audited["flagged"].sum()),
        "undefined": int(audited["gradcamo"].isna().sum()),
    }


def summary_by(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """:func:`summary` per value of column ``by`` (e.g. image, target_class, well): one row each."""
    if by not in table:
        raise ValueError(f"The table has no column '{by}' to summarise by.")
    rows = [{by: key, **summary(group)} for key, group in table.groupby(by, sort=True, dropna=False)]
    return pd.DataFrame(rows)
