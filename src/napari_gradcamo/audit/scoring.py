"""The Grad-CAMO score: the share of a cell's Grad-CAM attention that lies on the cell itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_gradcamo.output.results import SCORE_KINDS, ZERO_MAP_REASON  # noqa: F401  (defined with the table's columns)


@dataclass
class Score:
    """Where the attention of one crop went. The four shares sum to 1 when defined.

    ``gradcamo`` = Σ cam·M / Σ cam with M the central cell's mask; ``chance`` = |M| / |crop|, the score
    of a uniform map; ``outside_share`` is attention on padding beyond the image border.
    """

    gradcamo: float
    chance: float
    neighbour_share: float
    background_share: float
    outside_share: float
    reason: str = ""

    @property
    def lift(self) -> float:
        """Grad-CAMO / chance: how many times more attention the cell gets than a uniform map gives it."""
        return chance_lift(self.gradcamo, self.chance)

    @property
    def normalised(self) -> float:
        """(Grad-CAMO − chance) / (1 − chance): 0 = no better than a uniform map, 1 = all on the cell."""
        return chance_normalised(self.gradcamo, self.chance)

    def columns(self) -> dict:
        """The score columns of the results table."""
        return {"gradcamo": self.gradcamo, "chance": self.chance, "lift": self.lift, "normalised": self.normalised,
                "neighbour_share": self.neighbour_share, "background_share": self.background_share,
                "outside_share": self.outside_share, "reason": self.reason}


def chance_lift(gradcamo, chance):
    """Grad-CAMO / chance (NaN where chance is 0 or the score is undefined); works on floats and arrays."""
    g, c = np.asarray(gradcamo, dtype=np.float64), np.asarray(chance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(c > 0, g / np.where(c > 0, c, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def chance_normalised(gradcamo, chance):
    """(Grad-CAMO − chance) / (1 − chance) (NaN where chance is 1 or the score is undefined)."""
    g, c = np.asarray(gradcamo, dtype=np.float64), np.asarray(chance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(c < 1, (g - c) / np.where(c < 1, 1.0 - c, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def score_cam(
    cam: np.ndarray,
    cell_mask: np.ndarray,
    other_mask: np.ndarray | None = None,
    inside_image: np.ndarray | None = None,
) -> Score:
    """Score a non-negative ``cam`` already on the crop grid (same shape as ``cell_mask``).

    ``inside_image`` marks voxels that lie in the image (False on border padding); everything that is
    neither the cell, a neighbour nor padding is background.

    Parameters
    ----------
    cam : numpy.ndarray
        A non-negative map (z, y, x).
    cell_mask : numpy.ndarray
        The cell's voxels (bool, same shape).
    other_mask : numpy.ndarray, optional
        Other cells' voxels (the neighbours).
    inside_image : numpy.ndarray, optional
        True where the crop lies inside the image.

    Returns
    -------
    Score
        ``gradcamo`` (share of the map on the cell), ``chance`` (the cell's share of the crop),
        ``neighbour_share``, ``background_share``, ``outside_share``, ``lift``, ``normalised``, and a
        ``reason`` when the score is undefined (NaN).

    Raises
    ------
    ValueError
        Shapes differ, or the map has negative values.

    Examples
    --------
    A map that lies entirely on a cell covering a quarter of the crop:

    >>> import numpy as np, napari_gradcamo as ng
    >>> cell = np.zeros((1, 4, 4), bool)
    >>> cell[0, :2, :2] = True
    >>> score = ng.score_cam(cell.astype(float), cell)
    >>> score.gradcamo, score.chance, score.lift, score.normalised
    (1.0, 0.25, 4.0, 1.0)

    A uniform map gives the cell exactly its chance share:

    >>> ng.score_cam(np.ones((1, 4, 4)), cell).normalised
    0.0
    """
    arrays = {"cam": cam, "cell_mask": cell_mask, "other_mask": other_mask, "inside_image": inside_image}
    for name, value in arrays.items():
        if value is None and name in ("other_mask", "inside_image"):
            continue
        kind = np.asarray(value).dtype.kind if not isinstance(value, (str, bytes, dict)) else "O"
        if kind not in "biuf":
            raise ValueError(f"{name} must be a real-valued array (got {type(value).__name__}, dtype kind {kind!r}).")
    cam = np.asarray(cam, dtype=np.float64)
    cell_mask = np.asarray(cell_mask)
    for name in ("cell_mask", "other_mask", "inside_image"):
        value = arrays[name]
        if value is not None and np.shape(value) != cam.shape:
            raise ValueError(f"CAM shape {cam.shape} differs from {name} shape {np.shape(value)}.")
    if np.any(cam < 0):
        raise ValueError("Grad-CAMO needs a non-negative map; apply ReLU to the CAM first.")
    cell_mask = cell_mask.astype(bool)
    other_mask = np.zeros_like(cell_mask) if other_mask is None else np.asarray(other_mask).astype(bool)
    outside = np.zeros_like(cell_mask) if inside_image is None else ~np.asarray(inside_image).astype(bool)
    chance = float(cell_mask.mean())
    total = float(cam.sum())
    nan = float("nan")
    if not cell_mask.any():
        return Score(nan, chance, nan, nan, nan, "the cell's mask is empty in its crop")
    if not np.isfinite(total):
        return Score(nan, chance, nan, nan, nan, "the Grad-CAM map is not finite")
    if total <= 0.0:
        return Score(nan, chance, nan, nan, nan, ZERO_MAP_REASON)
    on_cell = float(cam[cell_mask].sum()) / total
    on_neighbours = float(cam[other_mask & ~cell_mask].sum()) / total
    on_outside = float(cam[outside & ~cell_mask & ~other_mask].sum()) / total
    background = max(0.0, 1.0 - on_cell - on_neighbours - on_outside)
    return Score(on_cell, chance, on_neighbours, background, on_outside)


def inside_image_mask(shape, padding) -> np.ndarray:
    """Boolean mask of a crop's voxels that lie inside the image, from its per-axis padding."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(before, size - after) for size, (before, after) in zip(shape, padding))] = True
    return mask
