"""The CAM engine against closed-form answers and against pytorch-grad-cam's own output."""

import numpy as np
import pytest
import torch

from analytic_models import ChannelMeanClassifier
from napari_gradcamo.audit.cam import CAM_METHODS, CamEngine, cam_class
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.io.images import make_image
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.layers import default_target_layer, list_target_layers
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata

GRADIENT_METHODS = [m for m in CAM_METHODS if m != "eigencam"]


def _analytic_bundle(crop_shape=(4, 12, 12)):
    meta = ModelMetadata("custom", ["on", "off"], ["a", "b"], list(crop_shape), normalization={"method": "none"},
                         target_layer="features")
    return ModelBundle(ChannelMeanClassifier(2, 2).eval(), meta)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_analytic_model_gives_exact_gradcamo(method):
    rng = np.random.default_rng(0)
    data = rng.random((2, 8, 30, 30)).astype(np.float32) + 0.05
    labels = np.zeros((8, 30, 30), np.uint32)
    labels[2:6, 9:15, 9:15] = 1
    labels[2:6, 15:19, 9:15] = 2
    bundle = _analytic_bundle()
    result = run_audit(make_image(data, "CZYX", ["a", "b"]), labels, bundle, AuditSettings(method=method, target_class="on"))
    table = result.table.set_index("label")
    for label in (1, 2):
        cam = result.cams[label]
        z, y, x = cam.origin
        window = (slice(z, z + 4), slice(y, y + 12), slice(x, x + 12))
        x0, m = data[0][window], labels[window]
        expected = (x0 * (m == label)).sum() / x0.sum()
        neighbours = (x0 * ((m > 0) & (m != label))).sum() / x0.sum()
        assert table.loc[label, "gradcamo"] == pytest.approx(expected, rel=1e-5)
        assert table.loc[label, "neighbour_share"] == pytest.approx(neighbours, rel=1e-5)
        assert table.loc[label, "chance"] == pytest.approx((m == label).mean())


def test_class_with_negative_evidence_has_undefined_score():
    data = np.random.default_rng(1).random((2, 8, 30, 30)).astype(np.float32) + 0.05
    labels = np.zeros((8, 30, 30), np.uint32)
    labels[2:6, 9:15, 9:15] = 1
    result = run_audit(make_image(data, "CZYX", ["a", "b"]), labels, _analytic_bundle(), AuditSettings(target_class="off"))
    row = result.table.iloc[0]
    # undefined is not a verdict (issue 21): no method finds positive evidence, so the cell is not flagged
    assert np.isnan(row["gradcamo"]) and "zero" in row["reason"] and not row["flagged"]


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    meta = ModelMetadata("small-cnn-3d", ["a", "b", "c"], ["x", "y"], [8, 32, 32])
    model = build_model(meta).eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model, meta


@pytest.mark.parametrize("method", CAM_METHODS)
def test_raw_maps_match_pytorch_grad_cam_up_to_its_normalisation(method):
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, meta = _small_cnn()
    x = torch.randn(3, 2, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    layer = default_target_layer(list_target_layers(model, meta.crop_shape, 2))
    targets = [0, 2, 1]
    # The library used as its README shows (gradients into every weight, maps normalised and zoomed).
    with cam_class(method)(model=model, target_layers=[model.get_submodule(layer)]) as library:
        documented = library(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    with CamEngine(model, layer, method, "cpu") as engine:
        probs, used, raw = engine.compute(x.numpy(), targets)
    assert list(used) == targets
    assert raw.min() >= 0 and raw.shape == (3, 4, 8, 8)
    # The library min-max scales each map, zooms it (cubic), clips at 0 and min-max scales again.
    ours = scale_cam_image(np.maximum(scale_cam_image(raw, tuple(x.shape[2:][::-1])), 0))
    np.testing.assert_allclose(ours, documented, atol=2e-5)
    np.testing.assert_allclose(probs, torch.softmax(model(x), 1).detach().numpy(), atol=1e-5)


def test_engine_freezes_then_restores_weights_and_predicts_by_default():
    model, meta = _small_cnn(1)
    x = np.random.default_rng(2).standard_normal((2, 2, 8, 32, 32)).astype(np.float32)
    with CamEngine(model, "stage2", "gradcam", "cpu") as engine:
        assert not any(p.requires_grad for p in model.parameters())
        probs, used, raw = engine.compute(x)
    assert all(p.requires_grad for p in model.parameters())
    assert list(used) == list(probs.argmax(1))
    assert raw.shape == (2, 4, 8, 8)  # stage2 halves z and quarters y, x


def test_target_layers_list_shapes_and_default_keeps_z():
    model, meta = _small_cnn()
    layers = list_target_layers(model, [8, 32, 32], 2)
    # the global pool (1×1×1: a constant map, Grad-CAMO = chance) is no candidate (issue 21)
    assert [l.name for l in layers if "." not in l.name] == ["stage1", "stage2", "stage3"]
    assert {l.name: l.output_shape for l in layers}["stage2"] == (32, 4, 8, 8)
    assert default_target_layer(layers) == "stage3"
    effnet = build_model(ModelMetadata("efficientnet-b0", ["a", "b"], list("12345"), [21, 128, 128]))
    layers = list_target_layers(effnet, [21, 128, 128], 5)
    chosen = [l for l in layers if l.name == default_target_layer(layers)][0]
    assert chosen.name == "_blocks.4" and chosen.output_shape[1:] == (2, 8, 8)  # more than one z-plane
    assert any(l.output_shape[1] == 1 for l in layers)  # the deepest ones collapse z at 21 slices


def test_unknown_method_names_the_3d_methods():
    with pytest.raises(ValueError, match="2D-only"):
        cam_class("scorecam")


@pytest.mark.parametrize("arch", ["small-cnn-3d", "efficientnet-b0"])
def test_channels_last_speedup_keeps_maps_and_restores_weight_layout(arch):
    torch.manual_seed(3)
    meta = ModelMetadata(arch, ["a", "b"], ["x", "y"], [8, 32, 32])
    model = build_model(meta).eval()
    layer = default_target_layer(list_target_layers(model, meta.crop_shape, 2))
    strides = {n: p.stride() for n, p in model.named_parameters()}
    x = np.random.default_rng(4).standard_normal((2, 2, 8, 32, 32)).astype(np.float32)
    maps = {}
    for fast in (True, False):
        engine = CamEngine(model, layer, "gradcam", "cpu")
        engine.channels_last = fast
        with engine:
            maps[fast] = engine.compute(x, [0, 1])[2]
    np.testing.assert_allclose(maps[True], maps[False], rtol=1e-4, atol=1e-5 * float(np.abs(maps[False]).max()))
    assert {n: p.stride() for n, p in model.named_parameters()} == strides
