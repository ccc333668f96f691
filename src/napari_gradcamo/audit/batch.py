"""The one batch loop: a batch of crops in, probabilities, raw maps and scored rows out.

The audit, profile extraction and the benchmarks all call :func:`score_batch`, so a crop is normalised,
explained and scored the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_gradcamo.audit.cam import CamEngine, upsample
from napari_gradcamo.audit.occlusion import occlusion_drops
from napari_gradcamo.audit.scoring import ZERO_MAP_REASON, Score, inside_image_mask, score_cam
from napari_gradcamo.crops.resample import mask_outside_cell, resample_crops
from napari_gradcamo.models.checkpoint import normalize_crops
from napari_gradcamo.output import results

#: Scores of a cell whose model output (probabilities or map) is NaN/Inf: undefined, with the reason.
NON_FINITE_SCORES = {"gradcamo": float("nan"), "lift": float("nan"), "normalised": float("nan"),
                     "neighbour_share": float("nan"), "background_share": float("nan"), "outside_share": float("nan"),
                     "reason": "model output not finite (NaN/Inf): check the weights, normalisation and image range"}

Padding = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass
class BatchCrops:
    """What the loop needs of each cell: its raw crop (C, z, y, x), its mask, its neighbours' mask and
    the zero-padding of the crop at the image border (``None``: the crop lies inside the image)."""

    images: np.ndarray  # (N, C, z, y, x), not normalised
    cell_masks: np.ndarray  # (N, z, y, x) bool
    other_masks: np.ndarray  # (N, z, y, x) bool
    paddings: Sequence[Padding | None]


@dataclass
class ScoredBatch:
    """The model's answer for a batch: class probabilities, the explained class, raw maps and scores."""

    probabilities: np.ndarray  # (N, K)
    targets: np.ndarray  # (N,) class index each map explains
    raw_maps: np.ndarray  # (N, z', y', x') at the target layer's resolution, ≥ 0
    scores: list[Score]
    drops: tuple[np.ndarray, np.ndarray] | None = None  # (cell hidden, context hidden), with occlusion only
    #: per cell, the CAM method whose map was scored (a fallback when the asked method's map was zero
    #: everywhere; "" when every method's was); None: the asked method for every cell
    map_methods: Sequence[str] | None = None

    def result_columns(self, class_names: Sequence[str], method: str, layer: str) -> list[dict]:
        """Per cell, the results-table columns the model decides: prediction, class probabilities, the
        explained class, every score, and how the map was made."""
        rows = []
        nan = np.full(len(self.scores), np.nan)
        drop_cell, drop_context = self.drops if self.drops is not None else (nan, nan)
        map_methods = self.map_methods if self.map_methods is not None else [method] * len(self.scores)
        for p, t, s, m, d_cell, d_context, used in zip(self.probabilities, self.targets, self.scores, self.raw_maps,
                                                       drop_cell, drop_context, map_methods):
            finite = bool(np.isfinite(p).all() and np.isfinite(m).all())
            scores = s.columns() if finite else {**s.columns(), **NON_FINITE_SCORES}
            rows.append({
                "predicted_class": class_names[int(np.argmax(p))] if finite else "",
                "probability": float(np.max(p)) if finite else float("nan"),
                "target_class": class_names[int(t)] if finite else "",
                **scores,
                "status": results.STATUS_AUDITED,
                "cam_method": method,
                "target_layer": layer,
                "map_method": used,
                "drop_cell_occluded": float(d_cell),
                "drop_context_occluded": float(d_context),
                **{results.PROBABILITY_PREFIX + n: float(v) if finite else float("nan") for n, v in zip(class_names, p)},
            })
        return rows


def batch_of(crops) -> BatchCrops:
    """:class:`BatchCrops` from :class:`~napari_gradcamo.crops.extract.CellCrop` objects."""
    return BatchCrops(np.stack([c.image for c in crops]), np.stack([c.cell_mask for c in crops]),
                      np.stack([c.other_mask for c in crops]), [c.padding for c in crops])


def score_batch(engine: CamEngine, crops: BatchCrops, normalization: dict, targets: Sequence[int | None] | None = None,
                occlusion: bool = False, *, model_crop_shape: Sequence[int] | None = None,
                crop_mode: str = "context", padding_value: float = 0.0) -> ScoredBatch:
    """Normalise ``crops`` as the model was trained (masked to the cell when ``crop_mode`` is "masked",
    resampled to ``model_crop_shape`` when the image's voxel size differs), run the CAM engine once, and
    score every map on the crops' own grid; with ``occlusion``, also classify each crop with its cell and
    with its surroundings hidden."""
    def as_model_input(images: np.ndarray) -> np.ndarray:
        batch = normalize_crops(images, normalization)
        if crop_mode == "masked":  # occluded copies (a multiple of the batch) are masked with their crop's cell
            masks = np.concatenate([crops.cell_masks] * (len(batch) // len(crops.cell_masks)))
            batch = mask_outside_cell(batch, masks, padding_value)
        return batch if model_crop_shape is None else resample_crops(batch, model_crop_shape)

    probs, chosen, raw = engine.compute(as_model_input(crops.images), list(targets) if targets is not None else None)
    used = list(getattr(engine, "last_methods", []) or [engine.method] * len(raw))
    maps = upsample(raw, crops.images.shape[2:])
    inside = [inside_image_mask(m.shape, pad) if pad is not None else None for m, pad in zip(maps, crops.paddings)]
    scores = [score_cam(m, cell, other, ins)
              for m, cell, other, ins in zip(maps, crops.cell_masks, crops.other_masks, inside)]
    tried = ", ".join([engine.method, *[f for f in getattr(engine, "fallback_methods", ()) if f != engine.method]])
    for s, u in zip(scores, used):
        if not u and s.reason == ZERO_MAP_REASON:
            s.reason = f"{ZERO_MAP_REASON}: {tried} all give zero maps (the method found no evidence; not a flag)"
    drops = None
    if occlusion:
        inside_all = np.stack([np.ones(maps.shape[1:], bool) if i is None else i for i in inside])
        drops = occlusion_drops(engine.predict, crops.images, crops.cell_masks, crops.other_masks, chosen,
                                np.asarray(probs), as_model_input, inside_all)
    return ScoredBatch(np.asarray(probs), np.asarray(chosen), np.asarray(raw), scores, drops, used)
