"""Field lists (manifest CSV): one field of view per row, with its class, plate, well and masks.

A manifest lists one field of view per row. Columns (case-insensitive; paths relative to the CSV's folder):

==================  ==========================================================================================
``image``           TIFF / OME-TIFF / ``.npy`` image (required)
``class``           class label, e.g. the treatment (required)
``well``            well id; splits never put one well in two splits (required)
``plate``, ``site`` plate id (default ``""``) and site number (default 1); the split groups by plate + well
``masks``           label image (TIFF / ``.npy``); when empty the image is segmented with cellpose
``axes``            image axes when the file does not say, e.g. ``ZCYX``
``channel_names``   ``;``-separated stain names when the file does not name them
``cellpose_model``, ``diameter``, ``nucleus_channel``, ``cyto_channel``, ``mode``, ``stitch_threshold``
                    per-row cellpose settings (else the defaults given to the command)
==================  ==========================================================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

REQUIRED = ("image", "class", "well")
#: A manifest is one short row per field; a larger file is not one (and is not read whole into memory).
MAX_MANIFEST_BYTES = 200_000_000
CELLPOSE_COLUMNS = ("cellpose_model", "diameter", "nucleus_channel", "cyto_channel", "mode", "stitch_threshold")


class ManifestError(ValueError):
    """A manifest cannot be used; the message names the row and the fix."""


def blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest; returns it with absolute ``image``/``masks`` paths and a ``group`` column."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist.")
    if path.is_dir():
        raise ManifestError(f"Manifest {path} is a folder; give the CSV file that lists the fields.")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"Manifest {path.name} is {path.stat().st_size:,} bytes (at most {MAX_MANIFEST_BYTES:,}); "
                            "a field list is one short row per field. Give the manifest CSV, not a data file.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"Manifest {path.name} is empty; it needs a header row (image,class,well) and one row "
                            "per field.") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise ManifestError(f"Manifest {path.name} is not a readable CSV file: {error}") from error
    table.columns = [c.strip().lower() for c in table.columns]
    if "label" in table.columns and "class" not in table.columns:
        table = table.rename(columns={"label": "class"})
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ManifestError(
            f"Manifest {path.name} lacks the column(s) {', '.join(missing)}; it needs image, class and well "
            "(plus plate, site, masks or cellpose settings as wanted)."
        )
    if table.empty:
        raise ManifestError(f"Manifest {path.name} has no rows.")
    root = path.resolve().parent
    table["plate"] = table["plate"] if "plate" in table.columns else ""
    table["site"] = table["site"] if "site" in table.columns else "1"
    table["masks"] = table["masks"] if "masks" in table.columns else ""
    for i, row in table.iterrows():
        for column in REQUIRED:
            if blank(row[column]):
                raise ManifestError(f"Manifest row {i + 1}: '{column}' is empty.")
        for column in ("image", "masks"):
            if blank(row[column]):
                continue
            p = Path(str(row[column]).strip())
            p = p if p.is_absolute() else root / p
            if not p.exists():
                raise ManifestError(f"Manifest row {i + 1}: {column} file {p} does not exist.")
            table.at[i, column] = str(p)
        try:
            table.at[i, "site"] = str(int(float(row["site"]))) if not blank(row["site"]) else "1"
        except ValueError:
            raise ManifestError(f"Manifest row {i + 1}: site '{row['site']}' is not a number.") from None
    table["site"] = table["site"].astype(int)
    table["group"] = table["plate"].astype(str) + "/" + table["well"].astype(str)
    return table.reset_index(drop=True)


def write_manifest(rows: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_csv(path, index=False)
    return path


def file_stamp(path: str) -> list:
    if blank(path):
        return []
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def row_settings(row: pd.Series, defaults) -> dict:
    """The cellpose settings of a row (row values over ``defaults``)."""
    from napari_gradcamo.segment.cellpose import SegmentationSettings

    settings = asdict(defaults or SegmentationSettings())
    for column in CELLPOSE_COLUMNS:
        if column in row.index and not blank(row[column]):
            key = "model" if column == "cellpose_model" else column
            value = row[column]
            if key in ("nucleus_channel", "cyto_channel"):
                value = int(float(value))
            elif key in ("diameter", "stitch_threshold"):
                value = float(value)
            settings[key] = value
    return settings


def read_row_image(row: pd.Series):
    from napari_gradcamo.io.images import read_image

    names = None
    if "channel_names" in row.index and not blank(row["channel_names"]):
        names = [n.strip() for n in str(row["channel_names"]).replace(",", ";").split(";") if n.strip()]
    axes = row["axes"] if "axes" in row.index and not blank(row["axes"]) else None
    return read_image(row["image"], axes=axes, channel_names=names)


def row_labels(row: pd.Series, image, folder: Path, seg_defaults, progress=None, cancel=None) -> np.ndarray:
    """The row's labels: its masks file, or cellpose (cached in ``folder/masks``)."""
    import tifffile

    from napari_gradcamo.io.images import check_labels_match, read_labels

    if not blank(row["masks"]):
        labels = read_labels(row["masks"])
    else:
        from napari_gradcamo.segment.cellpose import SegmentationSettings, segment

        settings = row_settings(row, seg_defaults)
        key = hashlib.sha256(json.dumps([file_stamp(row["image"]), settings], sort_keys=True, default=str).encode())
        cached = folder / "masks" / f"{Path(row['image']).name.split('.')[0]}_{key.hexdigest()[:12]}.tif"
        if cached.exists():
            labels = read_labels(cached)
        else:
            settings["normalize_percentiles"] = tuple(settings["normalize_percentiles"])
            labels = segment(image, SegmentationSettings(**settings), progress=progress, cancel=cancel)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(cached, labels, compression="zlib")
    check_labels_match(image, labels)
    return labels
