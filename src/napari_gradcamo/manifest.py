"""Training/profiling manifests (CSV) and the on-disk crop cache.

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

Crops are extracted once into a cache folder and read back as memory maps, never all held in memory:
``crops.npy`` (N, C, z, y, x) float32, ``masks.npy`` (N, z, y, x) uint8 (1 = the central cell,
2 = other cells), ``cells.parquet`` (one row per crop: manifest row, plate, well, site, label, class,
centroid, padding) and ``cache.json`` (the key: manifest rows, file sizes and times, crop shape,
channels). A cache whose key matches is reused as is; cellpose masks are cached in ``masks/`` by image
and settings, so a new crop shape does not re-segment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .crops import cell_table, crop_origin, extract_crop
from .images import ImageError
from .progress import CancelToken, ProgressCallback, check, report
from .training import CropSet, crop_mask_codes

CACHE_VERSION = 1
REQUIRED = ("image", "class", "well")
CELLPOSE_COLUMNS = ("cellpose_model", "diameter", "nucleus_channel", "cyto_channel", "mode", "stitch_threshold")


class ManifestError(ValueError):
    """A manifest cannot be used; the message names the row and the fix."""


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest; returns it with absolute ``image``/``masks`` paths and a ``group`` column."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
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
            if _blank(row[column]):
                raise ManifestError(f"Manifest row {i + 1}: '{column}' is empty.")
        for column in ("image", "masks"):
            if _blank(row[column]):
                continue
            p = Path(str(row[column]).strip())
            p = p if p.is_absolute() else root / p
            if not p.exists():
                raise ManifestError(f"Manifest row {i + 1}: {column} file {p} does not exist.")
            table.at[i, column] = str(p)
        try:
            table.at[i, "site"] = str(int(float(row["site"]))) if not _blank(row["site"]) else "1"
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


# ---------------------------------------------------------------------------------------------- the cache


@dataclass
class CropCache:
    """An opened crop cache: crops and masks as read-only memory maps plus the per-crop table."""

    folder: Path
    data: CropSet
    class_names: list[str]
    channel_names: list[str]
    crop_shape: list[int]
    reused: bool

    @property
    def cells(self) -> pd.DataFrame:
        return self.data.info


def _file_stamp(path: str) -> list:
    if _blank(path):
        return []
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _row_settings(row: pd.Series, defaults) -> dict:
    """The cellpose settings of a row (row values over ``defaults``)."""
    from .segmentation import SegmentationSettings

    settings = asdict(defaults or SegmentationSettings())
    for column in CELLPOSE_COLUMNS:
        if column in row.index and not _blank(row[column]):
            key = "model" if column == "cellpose_model" else column
            value = row[column]
            if key in ("nucleus_channel", "cyto_channel"):
                value = int(float(value))
            elif key in ("diameter", "stitch_threshold"):
                value = float(value)
            settings[key] = value
    return settings


def _read_row_image(row: pd.Series):
    from .images import read_image

    names = None
    if "channel_names" in row.index and not _blank(row["channel_names"]):
        names = [n.strip() for n in str(row["channel_names"]).replace(",", ";").split(";") if n.strip()]
    axes = row["axes"] if "axes" in row.index and not _blank(row["axes"]) else None
    return read_image(row["image"], axes=axes, channel_names=names)


def _row_labels(row: pd.Series, image, folder: Path, seg_defaults, progress=None, cancel=None) -> np.ndarray:
    """The row's labels: its masks file, or cellpose (cached in ``folder/masks``)."""
    import tifffile

    from .images import check_labels_match, read_labels

    if not _blank(row["masks"]):
        labels = read_labels(row["masks"])
    else:
        from .segmentation import SegmentationSettings, segment

        settings = _row_settings(row, seg_defaults)
        key = hashlib.sha256(json.dumps([_file_stamp(row["image"]), settings], sort_keys=True, default=str).encode())
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


def _padded_fraction(centroid, crop_shape, spatial) -> float:
    origin = crop_origin(centroid, crop_shape)
    inside = 1
    for o, s, n in zip(origin, crop_shape, spatial):
        inside *= max(0, min(o + s, n) - max(o, 0))
    return 1.0 - inside / float(np.prod(crop_shape))


def cache_key(manifest: pd.DataFrame, crop_shape, channel_names, class_names, max_padded_fraction, seg_defaults) -> str:
    rows = []
    for _, row in manifest.iterrows():
        rows.append([{k: str(v) for k, v in row.items()}, _file_stamp(row["image"]), _file_stamp(row["masks"]),
                     _row_settings(row, seg_defaults) if _blank(row["masks"]) else None])
    payload = [CACHE_VERSION, rows, list(map(int, crop_shape)), list(channel_names or []), list(class_names or []),
               float(max_padded_fraction)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def open_cache(folder: str | Path) -> CropCache:
    """Open a finished cache folder (memory maps, read-only)."""
    folder = Path(folder)
    info = json.loads((folder / "cache.json").read_text())
    cells = pd.read_parquet(folder / "cells.parquet")
    x = np.load(folder / "crops.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    data = CropSet(x, cells["class_index"].to_numpy(np.int64), cells["group"].astype(str).to_numpy(), masks, cells)
    return CropCache(folder, data, info["class_names"], info["channel_names"], info["crop_shape"], True)


def build_cache(
    manifest: pd.DataFrame,
    crop_shape: Sequence[int],
    folder: str | Path,
    *,
    channel_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    max_padded_fraction: float = 0.5,
    segmentation=None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> CropCache:
    """Extract every cell's crop of every manifest row into ``folder`` once; reuse it while the key matches.

    ``channel_names``: the stains to keep, in order (by name; default: the first image's channels).
    ``class_names``: the class order (default: the manifest's classes, sorted); classes not in it get -1.
    Images are read one at a time: pass 1 reads the labels and counts the crops, pass 2 writes them.
    """
    from .audit import resolve_channels

    folder = Path(folder)
    crop_shape = [int(s) for s in crop_shape]
    if len(crop_shape) != 3 or min(crop_shape) < 1:
        raise ValueError(f"crop shape {crop_shape} must be three positive sizes (z, y, x).")
    classes = list(class_names) if class_names is not None else sorted(set(manifest["class"].astype(str)))
    key = cache_key(manifest, crop_shape, channel_names, classes, max_padded_fraction, segmentation)
    info_path = folder / "cache.json"
    if info_path.exists():
        try:
            if json.loads(info_path.read_text()).get("key") == key:
                return open_cache(folder)
        except (json.JSONDecodeError, OSError, KeyError, ValueError):
            pass  # unreadable or unfinished cache: rebuild it
    folder.mkdir(parents=True, exist_ok=True)
    info_path.unlink(missing_ok=True)  # the cache is valid only once cache.json is written last
    n_rows = len(manifest)
    plan, names = [], list(channel_names) if channel_names is not None else None
    for i, row in manifest.iterrows():  # pass 1: labels (and cellpose when needed), which cells to keep
        check(cancel, "the crop cache")
        image = _read_row_image(row)
        if names is None:
            names = list(image.channel_names)
        try:
            channels = resolve_channels(image.channel_names, names)
        except ImageError as error:
            raise ManifestError(f"Manifest row {i + 1} ({Path(row['image']).name}): {error}") from error
        labels = _row_labels(row, image, folder, segmentation, cancel=cancel)
        cells = [c for c in cell_table(labels)
                 if _padded_fraction(c.centroid, crop_shape, labels.shape) <= max_padded_fraction]
        plan.append((channels, cells))
        report(progress, i + 1, 2 * n_rows, f"read {Path(row['image']).name}: {len(cells)} cells")
    total = sum(len(cells) for _, cells in plan)
    if total == 0:
        raise ManifestError("No cells to crop: every image's label image was empty or its cells lay outside their crops.")
    x = np.lib.format.open_memmap(folder / "crops.npy.tmp", mode="w+", dtype=np.float32,
                                  shape=(total, len(names), *crop_shape))
    masks = np.lib.format.open_memmap(folder / "masks.npy.tmp", mode="w+", dtype=np.uint8, shape=(total, *crop_shape))
    records, k = [], 0
    for (i, row), (channels, cells) in zip(manifest.iterrows(), plan):  # pass 2: write the crops
        check(cancel, "the crop cache")
        image = _read_row_image(row)
        labels = _row_labels(row, image, folder, segmentation)
        image.data = image.data[channels]
        image.channel_names = [names[j] for j in range(len(channels))]
        cls = str(row["class"])
        for cell in cells:
            crop = extract_crop(image, labels, cell, crop_shape)
            x[k] = crop.image
            masks[k] = crop_mask_codes(crop.cell_mask, crop.other_mask)
            records.append({
                "row": int(i), "image": str(row["image"]), "plate": str(row["plate"]), "well": str(row["well"]),
                "site": int(row["site"]), "group": str(row["group"]), "class": cls,
                "class_index": classes.index(cls) if cls in classes else -1, "label": int(cell.label),
                "centroid_z": cell.centroid[0], "centroid_y": cell.centroid[1], "centroid_x": cell.centroid[2],
                "volume_voxels": int(cell.volume), "padded_fraction": float(crop.padded_fraction),
                "origin": list(crop.origin), "padding": [int(v) for pair in crop.padding for v in pair],
            })
            k += 1
        report(progress, n_rows + i + 1, 2 * n_rows, f"cropped {Path(row['image']).name}")
    x.flush()
    masks.flush()
    del x, masks
    (folder / "crops.npy.tmp").replace(folder / "crops.npy")
    (folder / "masks.npy.tmp").replace(folder / "masks.npy")
    pd.DataFrame.from_records(records).to_parquet(folder / "cells.parquet", index=False)
    info = {"version": CACHE_VERSION, "key": key, "crop_shape": crop_shape, "channel_names": names,
            "class_names": classes, "n_cells": total, "max_padded_fraction": max_padded_fraction}
    info_path.write_text(json.dumps(info, indent=2))
    cache = open_cache(folder)
    cache.reused = False
    return cache


# ---------------------------------------------------------------------------------------------- synthetic manifests


def write_synthetic_manifest(
    out: str | Path,
    scenario: str = "honest",
    *,
    seed: int = 1,
    n_fields: int = 16,
    first_well: int = 0,
    confound_class=None,
    n_cells: int = 12,
    shape: Sequence[int] | None = None,
    sites_per_well: int = 4,
) -> Path:
    """Write synthetic fields of an :mod:`.experiment` scenario as OME-TIFFs + label TIFFs + ``manifest.csv``.

    ``confound_class`` (``"mismatch"``, ``"random"`` or a class index) breaks the background shortcut,
    as :func:`napari_gradcamo.synthetic.generate_dataset` documents.
    """
    import tifffile

    from .experiment import CLASS_NAMES, FIELD_SHAPE, VOXEL_SIZE, scenario_fields

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kwargs = {"n_cells": n_cells, "shape": tuple(shape) if shape is not None else FIELD_SHAPE,
              "sites_per_well": sites_per_well}
    if confound_class is not None:
        kwargs["confound_class"] = confound_class
    fields = scenario_fields(scenario, seed, n_fields, first_well, **kwargs)
    rows = []
    for f in fields:
        m = f.metadata
        stem = f"{m['plate']}_{m['well']}_s{m['site']}"
        image_path = out / "images" / f"{stem}.ome.tif"
        tifffile.imwrite(
            image_path, f.image.data.transpose(1, 0, 2, 3), ome=True,
            metadata={"axes": "ZCYX", "Channel": {"Name": list(f.image.channel_names)},
                      "PhysicalSizeZ": VOXEL_SIZE[0], "PhysicalSizeY": VOXEL_SIZE[1], "PhysicalSizeX": VOXEL_SIZE[2]},
        )
        tifffile.imwrite(out / "images" / f"{stem}_masks.tif", f.labels.astype(np.uint16), compression="zlib")
        rows.append({"image": f"images/{stem}.ome.tif", "masks": f"images/{stem}_masks.tif",
                     "class": CLASS_NAMES[f.treatment], "plate": m["plate"], "well": m["well"], "site": m["site"]})
    return write_manifest(rows, out / "manifest.csv")
