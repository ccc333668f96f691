"""The verdict (audit/verdict.py): the rule on per-cell tables, and end to end on real torch models whose
behaviour is known by construction — one reads a spot inside the cell, one reads the medium, and a class
recognised by the absence of the spot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from napari_gradcamo.audit.verdict import (
    INCONCLUSIVE,
    LOOKS_AT_CELLS,
    LOOKS_ELSEWHERE,
    NOT_ASSESSABLE,
    bootstrap_interval,
    judge_fields,
    judge_table,
)
from napari_gradcamo.io.images import Image
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata

CLASSES = ["control", "treated"]


def table(drop_cell, drop_context, target="treated", predicted=None, probability=0.9, layers=None, seed=0):
    rng = np.random.default_rng(seed)
    n = len(drop_cell)
    t = pd.DataFrame({"label": np.arange(1, n + 1), "target_class": target, "predicted_class": predicted or target,
                      "probability": probability, "drop_cell_occluded": drop_cell, "drop_context_occluded": drop_context})
    for name, score in (layers or {"a": rng.normal(0, 1, n)}).items():
        t[f"normalised@{name}"] = score
    return t


def test_the_rule_on_tables():
    rng = np.random.default_rng(0)
    n = 30
    high, low = rng.uniform(0.6, 0.95, n), rng.uniform(0.0, 0.05, n)
    assert judge_table(table(high, low), ["a"], CLASSES).classes["treated"].verdict == LOOKS_AT_CELLS
    assert judge_table(table(low, high), ["a"], CLASSES).classes["treated"].verdict == LOOKS_ELSEWHERE
    mixed = judge_table(table(np.r_[high[:15], low[:15]], np.r_[low[:15], high[:15]]), ["a"], CLASSES)
    assert mixed.classes["treated"].verdict == INCONCLUSIVE
    quiet = judge_table(table(low / 2, low / 3), ["a"], CLASSES).classes["treated"]
    assert quiet.verdict == NOT_ASSESSABLE and "what is missing" in quiet.reason
    few = judge_table(table(high[:3], low[:3]), ["a"], CLASSES).classes["treated"]
    assert few.verdict == NOT_ASSESSABLE and "only 3" in few.reason


def test_the_layer_read_is_the_one_that_agrees_with_the_causal_score():
    rng = np.random.default_rng(1)
    cell, context = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    causal = cell - context
    layers = {"noise": rng.normal(0, 1, 40), "tracks": causal + rng.normal(0, 0.05, 40), "against": -causal}
    report = judge_table(table(cell, context, layers=layers), list(layers), CLASSES)
    assert report.layer == "tracks"
    assert report.layer_agreement["tracks"] > 0.9 > report.layer_agreement["noise"]
    np.testing.assert_allclose(report.cells["score"], layers["tracks"])
    assert list(report.cells["flagged"]) == list(layers["tracks"] < 0)


def test_a_model_at_chance_is_reported_before_any_attention():
    rng = np.random.default_rng(2)
    cells = table(rng.uniform(0.6, 0.9, 40), rng.uniform(0, 0.05, 40), target="treated", predicted="treated")
    truth = ["control", "treated"] * 20  # one class predicted for every cell: accuracy 0.5 = majority
    report = judge_table(cells, ["a"], CLASSES, truth)
    assert not report.informative and report.verdict == NOT_ASSESSABLE
    assert "at chance" in report.notes[0] and "predicts 'treated' for every cell" in report.notes[0]
    assert not report.cells["flagged"].any()
    uniform = judge_table(table(rng.uniform(0.6, 0.9, 40), rng.uniform(0, 0.05, 40), probability=0.51), ["a"], CLASSES)
    assert not uniform.informative and "carry no information" in uniform.notes[0]


def test_bootstrap_interval_covers_the_mean():
    values = np.random.default_rng(3).normal(0.3, 0.1, 200)
    low, high = bootstrap_interval(values)
    assert low < 0.3 < high and high - low < 0.05


# --------------------------------------------------------------------------- real models with known behaviour


class SpotReader(nn.Module):
    """logit_treated = 20·(max over the region of x₀ − 0.5): 'treated' iff a bright spot is in view.
    ``where="cell"`` multiplies x₀ by channel 1 (the cell's stain), ``"medium"`` by 1 − channel 1."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.features = nn.Conv3d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
        self.pool = nn.AdaptiveMaxPool3d(1)

    def forward(self, x):
        stain = x[:, 1:2].clamp(0, 1)
        region = stain if self.where == "cell" else 1 - stain
        m = self.pool(self.features(x) * region).flatten(1)
        return torch.cat([torch.zeros_like(m), 20 * (m - 0.5)], dim=1)


def spot_fields(where: str, n_fields: int = 4):
    """Fields of 4 square cells; in treated fields a bright spot inside each cell (or beside it in the medium)."""
    fields, truth = [], []
    for i in range(n_fields):
        treated = i % 2 == 1
        labels = np.zeros((2, 48, 48), np.uint32)
        data = np.zeros((2, 2, 48, 48), np.float32)
        for k, (y, x) in enumerate([(6, 6), (6, 30), (30, 6), (30, 30)], start=1):
            labels[:, y:y + 10, x:x + 10] = k
            if treated:
                sy, sx = (y + 4, x + 4) if where == "cell" else (y + 12, x + 12)
                data[0, :, sy:sy + 2, sx:sx + 2] = 1.0
        data[1] = labels > 0
        fields.append((Image(data, ["spot", "stain"], (1.0, 1.0, 1.0), source=f"f{i}"), labels))
        truth.append([CLASSES[int(treated)]])
    return fields, truth


def spot_bundle(where: str) -> ModelBundle:
    meta = ModelMetadata("custom", CLASSES, ["spot", "stain"], [2, 24, 24], normalization={"method": "none"},
                         architecture_kwargs={"factory": "test_verdict:SpotReader"})
    return ModelBundle(SpotReader(where).eval(), meta, f"spot-{where}")


@pytest.mark.parametrize("where, expected", [("cell", LOOKS_AT_CELLS), ("medium", LOOKS_ELSEWHERE)])
def test_verdict_on_models_whose_cue_is_known(where, expected):
    fields, truth = spot_fields(where)
    report = judge_fields(spot_bundle(where), fields, true_classes=truth, sample=16, seed=0)
    assert report.informative
    assert report.classes["treated"].verdict == expected, report.classes["treated"]
    # the control class is recognised by the spot's absence: hiding anything adds no spot
    control = report.classes["control"]
    assert control.verdict == NOT_ASSESSABLE and "what is missing" in control.reason
    assert report.verdict == expected
    assert len(report.cells) == 16 and report.layer == "features"
    assert "Grad-CAM read at features" in report.summary_line()
