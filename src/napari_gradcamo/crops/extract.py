"""Fixed-size crops centred on each cell, with the central cell's mask and its neighbours' masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from napari_gradcamo.io.images import Image, ImageError
from napari_gradcamo.io.lazy import materialize


@dataclass
class CellInfo:
    """Where a cell is: its label, centroid (z, y, x voxels), volume and bounding box."""

    label: int
    centroid: tuple[float, float, float]
    volume: int
    bbox: tuple[slice, slice, slice]
    pieces: int = 1  # separate connected pieces of the label (> 1: one id on several objects)


@dataclass
class CellCrop:
    """One cell's crop.

    ``origin`` is the image index of the crop's first voxel (may be negative at borders);
    ``padding`` is ((before, after),) * 3 voxels that lie outside the image and were zero-filled.
    """

    label: int
    image: np.ndarray  # (C, z, y, x) float32
    cell_mask: np.ndarray  # (z, y, x) bool, the central cell only
    other_mask: np.ndarray  # (z, y, x) bool, every other cell
    origin: tuple[int, int, int]
    padding: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @property
    def padded_fraction(self) -> float:
        inside = np.prod([s - a - b for s, (a, b) in zip(self.cell_mask.shape, self.padding)])
        return float(1.0 - inside / self.cell_mask.size)



#: Above this id, labels are renumbered internally before locating cells, so memory follows the number of
#: voxels, never the largest id (``find_objects`` allocates one entry per id up to the largest).
_COMPACT_ABOVE = 65_535
_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, compact labels 0..n) where ``ids[compact] == labels``; a no-op mapping for small ids."""
    top = int(labels.max()) if labels.size else 0
    if top <= _COMPACT_ABOVE:
        return np.arange(top + 1), labels
    ids = np.unique(labels)  # one sorted copy; return_inverse would add an int64 argsort and inverse (8 B/voxel each)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
    compact = np.empty(labels.shape, np.uint32)
    for i in range(labels.shape[0]):  # plane by plane: the int64 positions never exist for the whole volume
        compact[i] = np.searchsorted(ids, labels[i])
    return ids, compact


def cell_table(labels: np.ndarray) -> list[CellInfo]:
    """Centroid, volume, bounding box and number of pieces of every label > 0, sorted by label."""
    ids, compact = _compact(labels)
    cells = []
    for index, bbox in enumerate(ndimage.find_objects(compact), start=1):
        if bbox is None:
            continue
        local = compact[bbox] == index
        coords = np.nonzero(local)
        centroid = tuple(float(c.mean() + s.start) for c, s in zip(coords, bbox))
        pieces = ndimage.label(local, _FULL_CONNECTIVITY)[1] if local.ndim == 3 else ndimage.label(local)[1]
        cells.append(CellInfo(int(ids[index]), centroid, int(local.sum()), bbox, int(pieces)))
    return cells


def crop_origin(centroid: Sequence[float], crop_shape: Sequence[int]) -> tuple[int, int, int]:
    """First voxel of a crop of ``crop_shape`` centred on ``centroid``."""
    return tuple(int(round(c)) - s // 2 for c, s in zip(centroid, crop_shape))


def window(array: np.ndarray, origin: Sequence[int], shape: Sequence[int]):
    """Slice ``array``'s last three axes at ``origin``/``shape``, zero-padding outside; returns (crop, padding).

    ``array`` may be lazy (dask, zarr): only the window is read."""
    spatial = array.shape[-3:]
    src, dst, padding = [], [], []
    for o, s, n in zip(origin, shape, spatial):
        start, stop = max(o, 0), min(o + s, n)
        if stop <= start:
            start = stop = 0
        src.append(slice(start, stop))
        dst.append(slice(start - o, start - o + (stop - start)))
        padding.append((start - o, (o + s) - stop) if stop > start else (s, 0))
    out = np.zeros(array.shape[:-3] + tuple(shape), dtype=array.dtype)
    lead = (slice(None),) * (array.ndim - 3)
    out[lead + tuple(dst)] = materialize(array[lead + tuple(src)])
    return out, tuple(padding)


def extract_crop(image: Image, labels: np.ndarray, cell: CellInfo, crop_shape: Sequence[int]) -> CellCrop:
    """The crop of ``crop_shape`` (z, y, x) centred on ``cell``; 2D images use z = 1 crops."""
    shape = tuple(int(s) for s in crop_shape)
    origin = crop_origin(cell.centroid, shape)
    pixels, padding = window(image.data, origin, shape)
    label_crop, _ = window(labels, origin, shape)
    cell_mask = label_crop == cell.label
    # crops are computed in float32 whatever the field's storage type (8/16-bit fields stay integer in memory)
    return CellCrop(cell.label, pixels.astype(np.float32, copy=False), cell_mask, (label_crop > 0) & ~cell_mask, origin, padding)


def iter_crops(
    image: Image,
    labels: np.ndarray,
    crop_shape: Sequence[int],
    cells: Iterable[CellInfo] | None = None,
) -> Iterator[CellCrop]:
    """Yield a crop for every cell (or for the given ``cells``)."""
    if tuple(labels.shape) != image.spatial_shape:
        raise ImageError(
            f"Labels shape {tuple(labels.shape)} differs from the image's ZYX shape {image.spatial_shape}."
        )
    for cell in cells if cells is not None else cell_table(labels):
        yield extract_crop(image, labels, cell, crop_shape)
