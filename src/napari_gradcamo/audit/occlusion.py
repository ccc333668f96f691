"""A gradient-free check beside Grad-CAMO: does the prediction depend on the cell or on its surroundings?

For each crop, two occluded copies are classified: the central cell replaced by the crop's background
level, and everything *but* the cell replaced by it. The drop in the explained class's probability for
each says what the decision needs: an honest model loses more when its cell is hidden
(``drop_cell_occluded`` > ``drop_context_occluded``), a model that reads the surroundings the reverse.
The background level of a channel is the median of the crop's voxels that lie in the image and in no cell
(the whole crop's 10th percentile when there are none), so an occluded region looks like empty medium.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: The percentile of a crop's channel used as its background level when the crop holds no background.
FALLBACK_PERCENTILE = 10.0


def background_levels(images: np.ndarray, cell_masks: np.ndarray, other_masks: np.ndarray,
                      inside: np.ndarray | None = None) -> np.ndarray:
    """Per crop and channel (N, C): the median of the voxels inside the image that belong to no cell."""
    n, c = images.shape[:2]
    levels = np.empty((n, c), dtype=np.float64)
    for i in range(n):
        empty = ~(cell_masks[i].astype(bool) | other_masks[i].astype(bool))
        if inside is not None:
            empty &= inside[i].astype(bool)
        for ch in range(c):
            values = images[i, ch][empty]
            levels[i, ch] = np.median(values) if values.size else np.percentile(images[i, ch], FALLBACK_PERCENTILE)
    return levels


def occluded_copies(images: np.ndarray, cell_masks: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cell hidden, context hidden): two copies of ``images`` (N, C, z, y, x), occluded by ``levels``."""
    cell = cell_masks.astype(bool)[:, None]
    fill = levels[:, :, None, None, None].astype(images.dtype)
    return np.where(cell, fill, images), np.where(cell, images, fill)


def occlusion_drops(predict, images: np.ndarray, cell_masks: np.ndarray, other_masks: np.ndarray,
                    targets: Sequence[int], base_probabilities: np.ndarray, normalize,
                    inside: np.ndarray | None = None, levels: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Drops (N,) in the target class's probability with the cell hidden and with its context hidden.

    ``predict(batch)`` returns probabilities of a normalised batch; ``normalize(raw)`` normalises raw
    crops as the model was trained; ``base_probabilities`` (N, K) are those of the intact crops.
    ``levels`` (N, C): what hidden voxels are filled with (default :func:`background_levels`).
    """
    if levels is None:
        levels = background_levels(images, cell_masks, other_masks, inside)
    hide_cell, hide_context = occluded_copies(images, cell_masks, levels)
    probs = predict(normalize(np.concatenate([hide_cell, hide_context])))
    n = len(images)
    rows = np.arange(n)
    targets = np.asarray(targets, dtype=int)
    base = np.asarray(base_probabilities)[rows, targets]
    return base - probs[:n][rows, targets], base - probs[n:][rows, targets]
