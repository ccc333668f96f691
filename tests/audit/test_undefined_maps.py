"""Undefined is not a verdict: a map zero everywhere is evidence about the CAM method, not about the model.
The engine falls back to another method computed from the same pass (``map_method`` says which), and a
cell whose every map is zero is not flagged (``reason`` says why)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from napari_gradcamo.audit.batch import BatchCrops, score_batch
from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.scoring import ZERO_MAP_REASON
from napari_gradcamo.output import results


class SquareMean(nn.Module):
    """A = x₀ (1 channel); logit_k = w_k · mean(A²) / 2. Grad-CAM's weight is mean(∂y/∂A) = w·mean(A)/N, exactly 0
    when x₀ is +1 and −1 on equally many voxels, so its map is zero; HiResCAM's ReLU(∂y/∂A · A) = w·A²/N is not."""

    def __init__(self, weights=(1.0, -1.0)):
        super().__init__()
        self.features = nn.Conv3d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
        self.register_buffer("w", torch.tensor(weights))

    def forward(self, x):
        a = self.features(x)
        return (a.pow(2).mean(dim=(1, 2, 3, 4)) / 2)[:, None] * self.w[None]


def crops(blank: bool = False) -> BatchCrops:
    x = -np.ones((1, 1, 2, 8, 8), np.float32)
    x[0, 0, :, :4, :] = 1.0  # +1 on half the voxels: mean exactly 0
    if blank:
        x[:] = 0.0  # A = 0: every method's map is zero
    cell = np.zeros((1, 2, 8, 8), bool)
    cell[0, :, 1:3, 1:3] = True
    return BatchCrops(x, cell, np.zeros_like(cell), [None])


def test_a_zero_gradcam_map_falls_back_to_hirescam():
    model = SquareMean().eval()
    with CamEngine(model, "features", "gradcam", "cpu") as engine:
        engine.fallback_methods = ()
        plain = score_batch(engine, crops(), {"method": "none"}, [0])
        engine.fallback_methods = ("hirescam", "gradcam++", "layercam")
        scored = score_batch(engine, crops(), {"method": "none"}, [0])
    assert np.isnan(plain.scores[0].gradcamo) and plain.scores[0].reason.startswith(ZERO_MAP_REASON)
    # HiResCAM's map is A² ∝ 1 everywhere: the cell's share is its share of the crop
    assert scored.scores[0].gradcamo == np.float64(crops().cell_masks.mean())
    row = scored.result_columns(["a", "b"], "gradcam", "features")[0]
    assert row["cam_method"] == "gradcam" and row["map_method"] == "hirescam"


def test_a_cell_whose_every_map_is_zero_is_not_flagged():
    model = SquareMean().eval()
    with CamEngine(model, "features", "gradcam", "cpu") as engine:
        scored = score_batch(engine, crops(blank=True), {"method": "none"}, [0])
    row = scored.result_columns(["a", "b"], "gradcam", "features")[0]
    assert row["map_method"] == "" and np.isnan(row["gradcamo"])
    assert "hirescam, gradcam++, layercam all give zero maps" in row["reason"]
    table = results.apply_threshold(results.conform(pd.DataFrame([{"label": 1, **row}]), ["a", "b"]), 0.0, on="normalised")
    assert not table["flagged"].any()
    other = table.assign(reason="the cell's mask is empty in its crop")  # other undefined scores still flag
    assert results.apply_threshold(other, 0.0, on="normalised")["flagged"].all()
