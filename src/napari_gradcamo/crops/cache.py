"""The on-disk crop cache built from a field list.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.crops.datasets import CropSet, cell_record, crop_mask_codes
from napari_gradcamo.crops.extract import cell_table, crop_origin, extract_crop
from napari_gradcamo.io.atomic import write_text, write_with
from napari_gradcamo.io.images import ImageError
from napari_gradcamo.models.metadata import check_crop_shape
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report
from napari_gradcamo.segment.field_list import (
    ManifestError,
    blank,
    file_stamp,
    read_row_image,
    row_labels,
    row_settings,
)

CACHE_VERSION = 1


@dataclass
class CropCache:
    """An opened crop cache: crops and masks as read-only memory maps plus the per-crop table."""

    folder: Path
    data: CropSet
    class_names: list[str]
    channel_names: list[str]
    crop_shape: list[int]
    reused: bool
    voxel_size: list[float] | None = None  # µm (z, y, x) of the first image, when its file says


    @property
    def cells(self) -> pd.DataFrame:
        return self.data.info


def _padded_fraction(centroid, crop_shape, spatial) -> float:
    origin = crop_origin(centroid, crop_shape)
    inside = 1
    for o, s, n in zip(origin, crop_shape, spatial):
        inside *= max(0, min(o + s, n) - max(o, 0))
    return 1.0 - inside / float(np.prod(crop_shape))


def cache_key(manifest: pd.DataFrame, crop_shape, channel_names, class_names, max_padded_fraction, seg_defaults) -> str:
    rows = []
    for _, row in manifest.iterrows():
        rows.append([{k: str(v) for k, v in row.items()}, file_stamp(row["image"]), file_stamp(row["masks"]),
                     row_settings(row, seg_defaults) if blank(row["masks"]) else None])
    payload = [CACHE_VERSION, rows, list(map(int, crop_shape)), list(channel_names or []), list(class_names or []),
               float(max_padded_fraction)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def check_images_once(manifest: pd.DataFrame) -> None:
    """Refuse a manifest that lists one image file twice (e.g. in two wells): its cells would land in two
    splits (training and validation) or be counted twice."""
    seen: dict[str, int] = {}
    for i, path in enumerate(manifest["image"].astype(str)):
        key = str(Path(path).resolve())
        if key in seen:
            first = manifest.iloc[seen[key]]
            raise ManifestError(
                f"Manifest rows {seen[key] + 1} and {i + 1} list the same image {Path(path).name} (wells "
                f"{first['group']} and {manifest.iloc[i]['group']}); list each image once, in its own well."
            )
        seen[key] = i


def check_class_list(manifest: pd.DataFrame, class_names: Sequence[str] | None) -> list[str]:
    """The class order for training: every manifest class exactly once (default: sorted); refuse a list with
    unknown, missing or repeated names."""
    present = sorted(set(manifest["class"].astype(str)))
    if class_names is None:
        classes = present
    else:
        classes = [str(c).strip() for c in class_names]
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        unknown = [c for c in classes if c not in present]
        missing = [c for c in present if c not in classes]
        problems = ([f"repeats {', '.join(repeated)}"] if repeated else []) + (
            [f"names {', '.join(unknown)}, which no manifest row has"] if unknown else []) + (
            [f"leaves out {', '.join(missing)}"] if missing else [])
        if problems:
            raise ManifestError(f"--classes {','.join(classes)} {'; '.join(problems)}. List every class of the "
                                f"manifest once ({', '.join(present)}), or remove the rows of unwanted classes "
                                "from the manifest.")
    if len(classes) < 2:
        raise ManifestError(f"The manifest has only the class(es) {', '.join(classes)}; training needs two or more.")
    return classes


def open_cache(folder: str | Path) -> CropCache:
    """Open a finished cache folder (memory maps, read-only)."""
    folder = Path(folder)
    info = json.loads((folder / "cache.json").read_text())
    cells = pd.read_parquet(folder / "cells.parquet")
    x = np.load(folder / "crops.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    data = CropSet(x, cells["class_index"].to_numpy(np.int64), cells["group"].astype(str).to_numpy(), masks, cells)
    return CropCache(folder, data, info["class_names"], info["channel_names"], info["crop_shape"], True,
                     info.get("voxel_size"))


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
    from napari_gradcamo.crops.channels import resolve_channels

    folder = Path(folder)
    crop_shape = check_crop_shape(crop_shape)
    if isinstance(max_padded_fraction, bool) or not isinstance(max_padded_fraction, (int, float)) \
            or not 0.0 <= max_padded_fraction <= 1.0:
        raise ValueError(f"max_padded_fraction (--max-padded-fraction) {max_padded_fraction!r} must be a fraction "
                         "from 0 to 1 (the share of a crop allowed outside the image).")
    check_images_once(manifest)
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
    plan, names, voxel_size = [], list(channel_names) if channel_names is not None else None, None
    for i, row in manifest.iterrows():  # pass 1: labels (and cellpose when needed), which cells to keep
        check(cancel, "the crop cache")
        image = read_row_image(row)
        if names is None:
            names = list(image.channel_names)
        if voxel_size is None and image.voxel_size is not None:
            voxel_size = [float(v) for v in image.voxel_size]
        try:
            channels = resolve_channels(image.channel_names, names)
        except ImageError as error:
            raise ManifestError(f"Manifest row {i + 1} ({Path(row['image']).name}): {error}") from error
        labels = row_labels(row, image, folder, segmentation, cancel=cancel)
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
        image = read_row_image(row)
        labels = row_labels(row, image, folder, segmentation)
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
                "class_index": classes.index(cls) if cls in classes else -1, **cell_record(cell, crop),
            })
            k += 1
        report(progress, n_rows + i + 1, 2 * n_rows, f"cropped {Path(row['image']).name}")
    x.flush()
    masks.flush()
    del x, masks
    (folder / "crops.npy.tmp").replace(folder / "crops.npy")
    (folder / "masks.npy.tmp").replace(folder / "masks.npy")
    table = pd.DataFrame.from_records(records)
    write_with(folder / "cells.parquet", lambda temp: table.to_parquet(temp, index=False))
    info = {"version": CACHE_VERSION, "key": key, "crop_shape": crop_shape, "channel_names": names,
            "class_names": classes, "n_cells": total, "max_padded_fraction": max_padded_fraction,
            "voxel_size": voxel_size}
    write_text(info_path, json.dumps(info, indent=2))
    cache = open_cache(folder)
    cache.reused = False
    return cache
