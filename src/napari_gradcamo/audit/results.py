"""The per-cell results table: one stable, documented schema for CLI, napari features and export."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

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
    "neighbour_share": "share of attention on other cells",
    "background_share": "share of attention on background inside the image",
    "outside_share": "share of attention on padding beyond the image border",
    "reason": "why gradcamo is NaN ('' when defined)",
    "flagged": "gradcamo below the threshold, undefined, or flagged by hand",
    "status": "'audited', or 'not audited' for cells without a result yet",
    "cam_method": "CAM method",
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


def _dtype(column: str) -> str:
    if column in ("label", "volume_voxels", "pieces"):
        return "int64"
    if column in ("touches_border", "flagged"):
        return "bool"
    if column in ("predicted_class", "target_class", "reason", "status", "cam_method", "target_layer"):
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


def apply_threshold(table: pd.DataFrame, threshold: float, manual: pd.Series | None = None) -> pd.DataFrame:
    """Set ``flagged``: Grad-CAMO under ``threshold`` or undefined (audited cells only), or ``manual``."""
    audited = table["status"] == STATUS_AUDITED
    low = table["gradcamo"].isna() | (table["gradcamo"] < threshold)
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
    into place together, so a failure (disk full, interrupt) leaves any previous files untouched."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from napari_gradcamo.io.atomic import write_group

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, parquet, record_path = table_paths(out_dir, stem)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
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
    """Headline numbers of an audit: cells, median Grad-CAMO and chance, share flagged."""
    audited = table[table["status"] == STATUS_AUDITED]
    return {
        "cells": int(len(audited)),
        "median_gradcamo": float(audited["gradcamo"].median()) if len(audited) else float("nan"),
        "median_chance": float(audited["chance"].median()) if len(audited) else float("nan"),
        "flagged": int(audited["flagged"].sum()) if len(audited) else 0,
        "undefined": int(audited["gradcamo"].isna().sum()) if len(audited) else 0,
    }
