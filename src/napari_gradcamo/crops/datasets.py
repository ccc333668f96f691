"""Sets of cell crops with their masks and per-cell table: built here for training, profiles and caches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.crops.extract import CellCrop, CellInfo, cell_table, extract_crop
from napari_gradcamo.io.images import Image

#: mask codes in :attr:`CropSet.masks`
MASK_BACKGROUND, MASK_CELL, MASK_OTHER = 0, 1, 2


@dataclass
class CropSet:
    """Crops (N, C, z, y, x), integer classes (N,) and one group id per crop (e.g. the well).

    ``masks`` (optional, N×z×y×x uint8): 1 on the central cell, 2 on other cells, 0 elsewhere — the
    Grad-CAMO regulariser and the profiles need them. ``info`` (optional DataFrame, one row per crop):
    plate, well, site, label, ... ``x`` may be a read-only memory map (see :mod:`.manifest`).
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    masks: np.ndarray | None = None
    info: object = None  # pandas.DataFrame | None

    def __len__(self) -> int:
        return len(self.y)


def crop_mask_codes(cell_mask: np.ndarray, other_mask: np.ndarray) -> np.ndarray:
    """One uint8 mask per crop: 1 on the central cell, 2 on other cells, 0 elsewhere."""
    codes = np.zeros(cell_mask.shape, np.uint8)
    codes[other_mask] = MASK_OTHER
    codes[cell_mask] = MASK_CELL
    return codes


def cell_record(cell: CellInfo, crop: CellCrop) -> dict:
    """The per-cell columns every crop set stores: label, centroid, volume, border padding, origin."""
    return {"label": int(cell.label), "centroid_z": cell.centroid[0], "centroid_y": cell.centroid[1],
            "centroid_x": cell.centroid[2], "volume_voxels": int(cell.volume),
            "padded_fraction": float(crop.padded_fraction), "origin": list(crop.origin),
            "padding": [int(v) for pair in crop.padding for v in pair]}


def crops_from_images(
    items: Iterable[tuple[Image, np.ndarray, int, str]], crop_shape: Sequence[int], max_padded_fraction: float = 0.5
) -> CropSet:
    """Crop every cell of each (image, labels, class, group); skip cells mostly outside the image."""
    xs, ys, groups, masks, rows = [], [], [], [], []
    for image, labels, cls, group in items:
        meta = getattr(image, "metadata", {}) or {}
        for cell in cell_table(labels):
            crop = extract_crop(image, labels, cell, crop_shape)
            if crop.padded_fraction > max_padded_fraction:
                continue
            xs.append(crop.image)
            ys.append(cls)
            groups.append(group)
            masks.append(crop_mask_codes(crop.cell_mask, crop.other_mask))
            rows.append({"plate": str(meta.get("plate", "")), "well": str(meta.get("well", group)),
                         "site": int(meta.get("site", 0) or 0), "class_index": int(cls), **cell_record(cell, crop)})
    if not xs:
        raise ValueError("No cells to train on: every image was empty or its cells lay outside their crops.")
    return CropSet(np.stack(xs).astype(np.float32), np.asarray(ys, np.int64), np.asarray(groups), np.stack(masks),
                   pd.DataFrame(rows))


def crops_from_fields(fields, crop_shape: Sequence[int]) -> CropSet:
    """Crops from synthetic fields (see :mod:`.synthetic`), grouped by well."""
    return crops_from_images(((f.image, f.labels, f.treatment, f.image.metadata["well"]) for f in fields), crop_shape)


def cropset_from_image(image, labels: np.ndarray, bundle, channel_map=None) -> CropSet:
    """Every cell of one image as a :class:`CropSet` (crops in the model's channels, masks, per-cell info)."""
    from napari_gradcamo.crops.channels import resolve_channels
    from napari_gradcamo.io.images import check_labels_match

    check_labels_match(image, labels)
    meta = bundle.metadata
    channels = resolve_channels(image.channel_names, meta.channel_names, channel_map)
    model_image = Image(image.data[channels], list(meta.channel_names), image.voxel_size, image.source)
    xs, masks, rows = [], [], []
    info = getattr(image, "metadata", {}) or {}
    for cell in cell_table(labels):
        crop = extract_crop(model_image, labels, cell, meta.crop_shape)
        xs.append(crop.image)
        masks.append(crop_mask_codes(crop.cell_mask, crop.other_mask))
        rows.append({"image": image.source, "plate": str(info.get("plate", "")), "well": str(info.get("well", "")),
                     "site": int(info.get("site", 0) or 0), "class": "", "class_index": -1, **cell_record(cell, crop)})
    if not xs:
        raise ValueError("The label image holds no cells.")
    table = pd.DataFrame(rows)
    table["group"] = table["plate"] + "/" + table["well"]
    return CropSet(np.stack(xs).astype(np.float32), np.full(len(xs), -1, np.int64), table["group"].to_numpy(),
                   np.stack(masks), table)
