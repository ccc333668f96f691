"""Grad-CAMO regulariser mechanics on small cases (not the research result: see docs/regularizer.md)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_gradcamo.audit.cam import CamEngine, upsample
from napari_gradcamo.audit.scoring import score_cam
from napari_gradcamo.crops.datasets import CropSet
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelMetadata
from napari_gradcamo.train.loop import train_classifier
from napari_gradcamo.train.regularizer import (
    LayerCapture,
    gradcam_of,
    gradcamo_penalty,
    share_inside,
    true_class_gradients,
)

CROP = (4, 16, 16)


def small_cnn(seed=0, width=4, channels=2):
    meta = ModelMetadata("small-cnn-3d", ["a", "b"], [f"ch{i}" for i in range(channels)], list(CROP),
                         architecture_kwargs={"width": width})
    torch.manual_seed(seed)
    return build_model(meta)


def blob_crops(n=12, seed=0):
    """Crops with a bright 'cell' (mask) in one corner and a class-coded texture elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, size=(n, 2, *CROP)).astype(np.float32)
    masks = np.zeros((n, *CROP), np.uint8)
    masks[:, :, 2:8, 2:8] = 1
    y = np.arange(n) % 2
    x[:, 0, :, 2:8, 2:8] += 1.0
    x[y == 1, 1, :, 10:, 10:] += 1.5  # the class sits off the cell
    return CropSet(x, y.astype(np.int64), np.array([f"w{i % 4}" for i in range(n)]), masks)


def test_differentiable_map_and_score_equal_the_audit_engine():
    model = small_cnn().eval()
    data = blob_crops(6)
    x = torch.as_tensor(data.x)
    with LayerCapture(model, "stage1") as cap:
        logits = model(x)
        target = logits.argmax(1)
        cam = gradcam_of(true_class_gradients(logits, cap.output, target, create_graph=False), cap.output)
        scores, valid = share_inside(cam.detach(), torch.as_tensor(data.masks == 1))
    with CamEngine(model, "stage1", "gradcam", "cpu") as engine:
        engine.channels_last = False
        _, targets, raw = engine.compute(data.x)
    assert np.array_equal(targets, target.numpy())
    np.testing.assert_allclose(cam.detach().numpy(), raw, rtol=1e-4, atol=1e-6)
    maps = upsample(raw, CROP)
    expected = [score_cam(m, k == 1).gradcamo for m, k in zip(maps, data.masks)]
    got = np.where(valid.numpy(), scores.numpy(), np.nan)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


class OneLayer(nn.Module):
    """feature = conv(1×1×1) → ReLU; logits = linear(mean(feature)): Grad-CAM is closed-form."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(OrderedDict(feat=nn.Conv3d(2, 2, 1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool3d(1),
                                             flat=nn.Flatten(), head=nn.Linear(2, 2)))

    def forward(self, x):
        return self.net(x)


def test_penalty_is_lower_when_attention_is_on_the_cell():
    mask = torch.zeros(1, *CROP, dtype=torch.bool)
    mask[:, :, 2:8, 2:8] = True
    on_cell = torch.zeros(1, 1, *CROP)
    on_cell[..., 2:8, 2:8] = 1.0
    off_cell = torch.zeros(1, 1, *CROP)
    off_cell[..., 10:, 10:] = 1.0
    s_on, _ = share_inside(on_cell[:, 0], mask)
    s_off, _ = share_inside(off_cell[:, 0], mask)
    assert float(s_on) > 0.99 and float(s_off) < 0.01


def test_gradients_flow_into_weights_and_training_on_the_penalty_moves_attention_onto_the_cell():
    torch.manual_seed(0)
    model = OneLayer()
    data = blob_crops(8)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.y)
    cell = torch.as_tensor(data.masks == 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    penalties = []
    with LayerCapture(model, "net.feat") as cap:
        for step in range(100):
            logits = model(x)
            penalty, scores = gradcamo_penalty(logits, cap.output, y, cell)
            optimizer.zero_grad()
            penalty.backward()
            if step == 0:
                grads = {name: p.grad for name, p in model.named_parameters()}
                # create_graph=True: the penalty reaches the conv weights AND the head (through ∂logit/∂A)
                for name in ("net.feat.weight", "net.head.weight"):
                    assert grads[name] is not None and torch.isfinite(grads[name]).all()
                    assert float(grads[name].abs().sum()) > 0, name
            optimizer.step()
            penalties.append(float(penalty.detach()))
    assert penalties[-1] < penalties[0] - 0.2, penalties[::10]
    assert penalties[-1] < 0.3


def test_without_create_graph_the_head_gets_no_gradient():
    """Control for the test above: the head's gradient exists only through the double backward."""
    torch.manual_seed(0)
    model = OneLayer()
    data = blob_crops(4)
    with LayerCapture(model, "net.feat") as cap:
        logits = model(torch.as_tensor(data.x))
        penalty, _ = gradcamo_penalty(logits, cap.output, torch.as_tensor(data.y), torch.as_tensor(data.masks == 1),
                                      create_graph=False)
    assert not penalty.requires_grad or all(
        g is None for g in torch.autograd.grad(penalty, [model.net.head.weight], allow_unused=True)
    )


def test_lambda_zero_is_exactly_plain_training_and_lambda_positive_is_not():
    data = blob_crops(24)
    norm = {"method": "none"}
    weights = {}
    for name, kwargs in (("plain", {}), ("zero", {"gradcamo_weight": 0.0, "target_layer": "stage1"}),
                         ("reg", {"gradcamo_weight": 1.0, "target_layer": "stage1"})):
        model = small_cnn(seed=3)
        history = train_classifier(model, data, norm, epochs=2, batch_size=8, seed=5, **kwargs)
        weights[name] = {k: v.clone() for k, v in model.state_dict().items()}
        if name == "reg":
            assert np.isfinite(history.penalty).all() and 0 <= min(history.penalty) <= 1
            assert np.isfinite(history.train_gradcamo).all()
    assert all(torch.equal(weights["plain"][k], weights["zero"][k]) for k in weights["plain"])
    assert any(not torch.equal(weights["plain"][k], weights["reg"][k]) for k in weights["plain"])


def test_regulariser_needs_masks_and_a_layer():
    data = blob_crops(8)
    data.masks = None
    with pytest.raises(ValueError, match="mask"):
        train_classifier(small_cnn(), data, {"method": "none"}, epochs=1, gradcamo_weight=1.0, target_layer="stage1")
    with pytest.raises(ValueError, match="layer"):
        train_classifier(small_cnn(), blob_crops(8), {"method": "none"}, epochs=1, gradcamo_weight=1.0)


def test_a_map_with_no_positive_evidence_cannot_escape_the_penalty():
    """The seed-3 collapse of the first objective: a true-class Grad-CAM ≤ 0 everywhere dropped out of the
    penalty. The local contributions still count such a crop and pass a gradient."""
    activations = torch.rand(2, 3, *CROP, requires_grad=True)
    head = torch.tensor([[-1.0, -2.0, -0.5], [1.0, 2.0, 0.5]])  # class 0's evidence is negative everywhere
    logits = activations.mean(dim=(2, 3, 4)) @ head.T
    mask = torch.zeros(2, *CROP, dtype=torch.bool)
    mask[:, :, :8, :8] = True
    target = torch.tensor([0, 0])
    penalty, reported = gradcamo_penalty(logits, activations, target, mask)
    assert torch.isnan(reported).all()  # the audit's (ReLU) score is undefined for such maps...
    assert 0.0 < float(penalty.detach()) <= 1.0  # ...but the penalty counts them
    (grad,) = torch.autograd.grad(penalty, activations)
    assert float(grad.abs().sum()) > 0


def test_background_evidence_hidden_from_gradcam_still_costs():
    """How the first (Grad-CAM) objective was gamed: a channel that reads the background with gradients of
    both signs averages to a zero Grad-CAM weight, so Grad-CAM shows only the cell while the logit depends
    on the background. The local contributions see it."""
    mask = torch.zeros(1, *CROP, dtype=torch.bool)
    mask[:, :, 4:12, 4:12] = True
    cell = torch.zeros(1, *CROP)
    cell[mask] = 1.0
    texture = (~mask).float()  # a background-only channel
    activations = torch.stack([cell, texture], dim=1).requires_grad_(True)
    signs = torch.ones(CROP)
    signs[:, :, : CROP[2] // 2] = -1.0  # the background read as +1 on one side and −1 on the other
    signs = signs - (signs * texture[0]).sum() / texture[0].sum() * texture[0]  # its mean gradient: exactly 0
    logit = (activations[:, 0] * 0.01).sum() + (activations[:, 1] * signs).sum()
    logits = torch.stack([-logit, logit]).reshape(1, 2)
    penalty, reported = gradcamo_penalty(logits, activations, torch.tensor([1]), mask)
    assert float(reported[0]) == pytest.approx(1.0)  # Grad-CAM: all of the evidence on the cell
    assert float(penalty.detach()) > 0.9  # contributions: nearly all of it outside
