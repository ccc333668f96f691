"""Paired 2D data (brightfield planes → five stains) from synthetic fields, normalisation and crops.

A 2D pair is the stains at the field's focal plane (where nuclei are widest) and the brightfield planes
rendered at ``defocus_um`` around it, with the whole-cell and nucleus labels of that plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_gradcamo.synthetic.brightfield import DEFAULT_DEFOCUS_UM, focal_plane, render_brightfield
from napari_gradcamo.synthetic.generator import STAINS, SyntheticField, generate_dataset
from napari_gradcamo.virtual_stain.model import VirtualStainError

#: pooled percentiles that map each stain to [-1, 1]
STAIN_PERCENTILES = (0.5, 99.9)


@dataclass
class PairedImage:
    """One 2D field: brightfield ``(P, Y, X)``, stains ``(5, Y, X)`` (camera units), labels ``(Y, X)``."""

    brightfield: np.ndarray
    stains: np.ndarray
    labels: np.ndarray
    nuclei: np.ndarray
    treatment: int
    name: str


def pair_from_field(field: SyntheticField, defocus_um: Sequence[float] = DEFAULT_DEFOCUS_UM) -> PairedImage:
    z = focal_plane(field)
    md = field.metadata
    return PairedImage(
        render_brightfield(field, defocus_um), field.image.data[:, z].astype(np.float32),
        field.labels[z].copy(), field.nuclei[z].copy(), int(field.treatment),
        f"{md.get('plate', '')}_{md.get('well', '')}_s{md.get('site', 0)}",
    )


def synthetic_pairs(seed: int, n_fields: int, n_classes: int, *, size: int = 96, n_cells: int = 7,
                    first_well: int = 0, defocus_um: Sequence[float] = DEFAULT_DEFOCUS_UM) -> list[PairedImage]:
    """``n_fields`` paired fields at 1 µm pixels (``16 × size × size`` stacks), one site per well."""
    fields = generate_dataset(
        seed, n_fields, n_classes=n_classes, shape=(16, size, size), n_cells=n_cells,
        voxel_size=(1.0, 1.0, 1.0), sites_per_well=1, first_well=first_well,
    )
    return [pair_from_field(f, defocus_um) for f in fields]


@dataclass
class StainScaling:
    """Per-stain affine map of camera units to the model's [-1, 1] range (fixed from the training set).

    One fixed map for every image keeps intensity differences between classes (a per-image
    normalisation would erase the treatment's brightening).
    """

    low: list[float]
    high: list[float]
    #: The training stains' per-stain minimum and maximum (camera units): predictions are clipped to them. A
    #: model saved before they were recorded clips to [low, high] (its training percentiles).
    minimum: list[float] | None = None
    maximum: list[float] | None = None

    @classmethod
    def fit(cls, stains: Sequence[np.ndarray]) -> "StainScaling":
        pooled = np.concatenate([s.reshape(s.shape[0], -1) for s in stains], axis=1)
        lo, hi = np.percentile(pooled, STAIN_PERCENTILES, axis=1)
        return cls([float(v) for v in lo], [float(max(h, l + 1e-3)) for l, h in zip(lo, hi)],
                   [float(v) for v in pooled.min(axis=1)], [float(v) for v in pooled.max(axis=1)])

    @classmethod
    def from_dict(cls, data) -> "StainScaling":
        try:
            low, high = [float(v) for v in data["low"]], [float(v) for v in data["high"]]
            minimum = [float(v) for v in data["minimum"]] if data.get("minimum") is not None else None
            maximum = [float(v) for v in data["maximum"]] if data.get("maximum") is not None else None
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            raise VirtualStainError(f"stain scaling must be {{'low': [...], 'high': [...]}}: {error}.") from error
        if len(low) != len(high) or not all(h > lo for lo, h in zip(low, high)):
            raise VirtualStainError("stain scaling needs as many 'low' as 'high' values, each high > low.")
        if (minimum is None) != (maximum is None) or (minimum is not None and not (
                len(minimum) == len(maximum) == len(low) and all(a <= b for a, b in zip(minimum, maximum)))):
            raise VirtualStainError("stain scaling's 'minimum' and 'maximum' need one value per stain, minimum ≤ maximum.")
        return cls(low, high, minimum, maximum)

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "minimum": self.minimum, "maximum": self.maximum}

    def data_range(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """The training stains' range in camera units, shaped to broadcast over ``(..., C, Y, X)``."""
        if self.minimum is None:
            return self._arrays(ndim)
        shape = [1] * ndim
        shape[ndim - 3] = -1
        return (np.asarray(self.minimum, np.float32).reshape(shape),
                np.asarray(self.maximum, np.float32).reshape(shape))

    def clip_model(self, model_values: np.ndarray) -> np.ndarray:
        """Model-unit values clipped to the training stains' range (see :meth:`data_range`)."""
        lo, hi = self.data_range(np.ndim(model_values))
        return np.clip(model_values, self.to_model(lo), self.to_model(hi)).astype(np.float32)

    def _arrays(self, ndim: int):
        """low/high shaped to broadcast over ``(..., C, Y, X)``."""
        shape = [1] * ndim
        shape[ndim - 3] = -1
        return np.asarray(self.low, np.float32).reshape(shape), np.asarray(self.high, np.float32).reshape(shape)

    def to_model(self, stains: np.ndarray) -> np.ndarray:
        lo, hi = self._arrays(stains.ndim)
        return (2.0 * (stains - lo) / (hi - lo) - 1.0).astype(np.float32)

    def to_camera(self, model_values: np.ndarray) -> np.ndarray:
        """Model units to camera units, clipped to the training stains' range (a prediction never leaves it)."""
        lo, hi = self._arrays(model_values.ndim)
        camera = (model_values + 1.0) * 0.5 * (hi - lo) + lo
        return np.clip(camera, *self.data_range(model_values.ndim)).astype(np.float32)


def normalise_brightfield(brightfield: np.ndarray) -> np.ndarray:
    """Each plane to zero mean, unit spread (brightfield intensity has no absolute meaning)."""
    bf = np.asarray(brightfield, dtype=np.float32)
    if bf.ndim == 2:
        bf = bf[None]
    if bf.ndim != 3 or not np.isfinite(bf).all():
        raise VirtualStainError(f"brightfield must be a finite (planes, y, x) or (y, x) array, got shape {bf.shape}.")
    mean = bf.mean(axis=(1, 2), keepdims=True)
    sd = bf.std(axis=(1, 2), keepdims=True)
    return (bf - mean) / np.maximum(sd, 1e-6) / 3.0


def random_crops(pairs: Sequence[PairedImage], scaling: StainScaling, size: int, count: int,
                 rng: np.random.Generator):
    """``count`` random crops with random flips and 90° rotations: (bf, stains, classes) arrays."""
    bfs, stains, classes = [], [], []
    normalised = [(normalise_brightfield(p.brightfield), scaling.to_model(p.stains)) for p in pairs]
    for _ in range(count):
        i = int(rng.integers(len(pairs)))
        bf, st = normalised[i]
        y = int(rng.integers(0, bf.shape[1] - size + 1))
        x = int(rng.integers(0, bf.shape[2] - size + 1))
        both = np.concatenate([bf[:, y:y + size, x:x + size], st[:, y:y + size, x:x + size]])
        both = np.rot90(both, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            both = both[:, :, ::-1]
        bfs.append(both[: bf.shape[0]])
        stains.append(both[bf.shape[0]:])
        classes.append(pairs[i].treatment)
    return np.ascontiguousarray(bfs), np.ascontiguousarray(stains), np.asarray(classes, np.int64)


@dataclass
class CellCrops:
    """Crops centred on cells: brightfield, stains (model units), masks, class and source field."""

    brightfield: np.ndarray  # (N, P, s, s)
    stains: np.ndarray  # (N, 5, s, s)
    labels: np.ndarray  # (N, s, s) all cells, ids of the field
    cell_ids: np.ndarray  # (N,) id of the central cell
    classes: np.ndarray  # (N,)
    fields: np.ndarray  # (N,) index of the source field

    @property
    def cell_masks(self) -> np.ndarray:
        return self.labels == self.cell_ids[:, None, None]


def cell_crops(pairs: Sequence[PairedImage], scaling: StainScaling, size: int,
               per_field: int | None = None) -> CellCrops:
    """One crop per cell (centred on its centroid, shifted to stay inside the field)."""
    from scipy import ndimage as ndi

    out = {k: [] for k in ("bf", "st", "lab", "id", "cls", "field")}
    for f, p in enumerate(pairs):
        bf, st = normalise_brightfield(p.brightfield), scaling.to_model(p.stains)
        ids = [int(i) for i in np.unique(p.labels) if i > 0]
        centres = ndi.center_of_mass(np.ones_like(p.labels), p.labels, ids)
        for cell, (cy, cx) in list(zip(ids, centres))[:per_field]:
            y = int(np.clip(round(cy) - size // 2, 0, p.labels.shape[0] - size))
            x = int(np.clip(round(cx) - size // 2, 0, p.labels.shape[1] - size))
            window = (slice(y, y + size), slice(x, x + size))
            if (p.labels[window] == cell).sum() < 20:
                continue
            out["bf"].append(bf[(slice(None),) + window])
            out["st"].append(st[(slice(None),) + window])
            out["lab"].append(p.labels[window])
            out["id"].append(cell)
            out["cls"].append(p.treatment)
            out["field"].append(f)
    if not out["id"]:
        raise VirtualStainError("no cell fits a crop: use larger fields or a smaller crop size.")
    return CellCrops(np.stack(out["bf"]), np.stack(out["st"]), np.stack(out["lab"]), np.asarray(out["id"]),
                     np.asarray(out["cls"]), np.asarray(out["field"]))


__all__ = ["STAINS", "PairedImage", "StainScaling", "CellCrops", "synthetic_pairs", "pair_from_field",
           "normalise_brightfield", "random_crops", "cell_crops"]
