"""Hand-crafted single-cell features (the field's long-standing practice), as a baseline profile.

Measured with scikit-image on the central cell of each crop (the same crops the networks see), in voxels:

* shape (``skimage.measure.regionprops`` in 3D): volume, surface area (marching-cubes mesh of the mask,
  ``mesh_surface_area``), sphericity π^⅓ (6V)^⅔ / A, major and minor axis lengths, solidity (convex hull in
  3D), extent, equivalent diameter;
* intensity per channel inside the cell: mean, standard deviation, 10th/50th/90th percentiles;
* texture per channel (cheap): mean absolute intensity gradient inside the cell, relative to the mean.

Only the cell is measured (as CellProfiler does): what lies outside the mask — neighbours, background — cannot
enter these profiles.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.crops.datasets import MASK_CELL, CropSet
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report

SHAPE_FEATURES = ("volume", "surface_area", "sphericity", "axis_major_length", "axis_minor_length", "solidity",
                  "extent", "equivalent_diameter")
INTENSITY_STATS = ("mean", "std", "p10", "p50", "p90", "gradient")


def _surface_area(mask: np.ndarray) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 1)
    if padded.shape[0] < 2 or mask.sum() == 0:
        return float("nan")
    verts, faces, _, _ = marching_cubes(padded, 0.5)
    return float(mesh_surface_area(verts, faces))


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """The shape features of one 3D binary mask (NaN for an empty mask)."""
    from skimage.measure import regionprops

    if not mask.any():
        return {name: float("nan") for name in SHAPE_FEATURES}
    props = regionprops(mask.astype(np.uint8))[0]
    area = _surface_area(mask)
    volume = float(props.area)
    return {
        "volume": volume,
        "surface_area": area,
        "sphericity": float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area) if area > 0 else float("nan"),
        "axis_major_length": float(props.axis_major_length),
        "axis_minor_length": float(props.axis_minor_length),
        "solidity": _solidity(props),
        "extent": float(props.extent),
        "equivalent_diameter": float(props.equivalent_diameter_area),
    }


def _solidity(props) -> float:
    try:
        return float(props.solidity)
    except (ValueError, RuntimeError):  # flat or tiny cells: qhull cannot build a 3D hull
        return float("nan")


def intensity_features(crop: np.ndarray, mask: np.ndarray, channel_names: Sequence[str]) -> dict[str, float]:
    """Per-channel intensity statistics and gradient texture of ``crop`` (C, z, y, x) inside ``mask``."""
    out = {}
    for c, name in enumerate(channel_names):
        values = crop[c][mask]
        if values.size == 0:
            out.update({f"{name}_{s}": float("nan") for s in INTENSITY_STATS})
            continue
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        grads = np.gradient(crop[c].astype(np.float64), axis=tuple(a for a in range(3) if crop.shape[1 + a] > 1))
        grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
        magnitude = np.sqrt(sum(g**2 for g in grads))[mask]
        mean = float(values.mean())
        out.update({f"{name}_mean": mean, f"{name}_std": float(values.std()), f"{name}_p10": float(p10),
                    f"{name}_p50": float(p50), f"{name}_p90": float(p90),
                    f"{name}_gradient": float(magnitude.mean() / max(abs(mean), 1e-12))})
    return out


def handcrafted_profiles(data: CropSet, channel_names: Sequence[str], progress: ProgressCallback | None = None,
                         cancel: CancelToken | None = None) -> pd.DataFrame:
    """One row of hand-crafted features per crop of ``data`` (needs ``data.masks``)."""
    if data.masks is None:
        raise ValueError("Hand-crafted features need each crop's cell mask (CropSet.masks).")
    rows = []
    for i in range(len(data)):
        check(cancel, "the hand-crafted features")
        mask = np.asarray(data.masks[i]) == MASK_CELL
        crop = np.asarray(data.x[i], np.float32)
        rows.append({**shape_features(mask), **intensity_features(crop, mask, channel_names)})
        report(progress, i + 1, len(data), f"{i + 1}/{len(data)} cells")
    return pd.DataFrame(rows)
