"""Small checks of what lets any classifier be audited: heads, factory signatures, layers at any depth,
2D models (plane by plane too), and crops resampled to the model's voxel size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.crops.resample import image_crop_shape, resample_crops
from napari_gradcamo.io.images import make_image
from napari_gradcamo.models.architectures import call_factory
from napari_gradcamo.models.backbones import small_cnn
from napari_gradcamo.models.heads import probabilities
from napari_gradcamo.models.layers import LayerError, check_target_layer, layer_tree, list_target_layers
from napari_gradcamo.models.metadata import CheckpointError, ModelBundle, ModelMetadata


class Shared(nn.Module):
    """``block`` runs twice; ``deep.a.b`` sits three modules down."""

    def __init__(self):
        super().__init__()
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.deep = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))

    def forward(self, x):
        return self.head(self.deep(self.block(self.block(x))))


def test_layers_any_depth_and_clear_errors():
    model = Shared().eval()
    names = [l.name for l in list_target_layers(model, (1, 16, 16), 4)]
    assert "deep.0.0" in names and "block" not in names
    with pytest.raises(LayerError, match="runs 2 times"):
        check_target_layer(model, "block", (1, 16, 16), 4)
    with pytest.raises(LayerError, match="no spatial feature map"):
        check_target_layer(model, "head.2", (1, 16, 16), 4)
    with pytest.raises(LayerError, match="does not exist"):
        check_target_layer(model, "nope", (1, 16, 16), 4)
    tree = layer_tree(model, (1, 16, 16), 4, chosen="block")
    assert any(line.startswith("* block") and "called twice" in line for line in tree)
    assert any(line.startswith("      deep.0.0") for line in tree)  # indented by depth


def test_single_logit_explains_both_classes():
    torch.manual_seed(0)
    model = Shared().eval()
    x = np.random.default_rng(0).random((4, 4, 1, 16, 16), dtype=np.float32)
    with CamEngine(model, "deep.0.0", "gradcam", "cpu", head="sigmoid-binary") as engine:
        p, _, pos = engine.compute(x, [1] * 4)
        _, _, neg = engine.compute(x, [0] * 4)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    z = model(torch.from_numpy(x[:, :, 0])).detach()
    np.testing.assert_allclose(p[:, 1], torch.sigmoid(z[:, 0]).numpy(), rtol=1e-5)
    # +z and −z: every crop has a map for one class or the other, and no crop has both all-zero
    assert ((pos.reshape(4, -1).sum(1) > 0) | (neg.reshape(4, -1).sum(1) > 0)).all()
    multi = probabilities("multilabel", torch.tensor([[0.0, 2.0, -2.0]]))
    np.testing.assert_allclose(multi, torch.sigmoid(torch.tensor([[0.0, 2.0, -2.0]])).numpy())


def test_factories_of_any_signature():
    assert isinstance(call_factory(lambda: nn.Linear(2, 2), 5, 3, {}), nn.Module)
    m = call_factory(lambda in_chans, n_classes: nn.Conv2d(in_chans, n_classes, 1), 5, 3, {})
    assert (m.in_channels, m.out_channels) == (5, 3)
    with pytest.raises(CheckpointError, match="when called with"):
        call_factory(lambda depth: nn.Linear(depth, 2), 5, 3, {})
    with pytest.raises(CheckpointError, match="not a torch.nn.Module"):
        call_factory(lambda: "model", 5, 3, {})


def _bundle_2d(**meta):
    torch.manual_seed(0)
    model = small_cnn(2, 2, width=4, dims=2).eval()
    return ModelBundle(model, ModelMetadata("small-cnn-2d", ["a", "b"], ["c0", "c1"], [1, 16, 16],
                                            architecture_kwargs={"width": 4}, target_layer="stage1", **meta))


def _field(z: int, voxel=(1.0, 1.0, 1.0)):
    rng = np.random.default_rng(1)
    labels = np.zeros((z, 48, 48), np.int32)
    labels[:, 10:20, 10:20] = 1
    labels[:, 28:40, 26:38] = 2
    data = rng.random((2, z, 48, 48)).astype(np.float32) + (labels > 0)[None]
    return make_image(data, "CZYX", ["c0", "c1"], voxel), labels


def test_2d_model_plane_by_plane_on_a_zstack():
    image, labels = _field(5)
    one = run_audit(image, labels, _bundle_2d())
    assert one.cams[1].raw.shape[0] == 1
    three = run_audit(image, labels, _bundle_2d(), AuditSettings(planes=3))
    assert three.cams[1].raw.shape[0] == 3 and three.cams[1].crop_shape == (3, 16, 16)
    assert np.isfinite(three.table["gradcamo"]).all()


def test_crops_resampled_to_the_model_voxel_size():
    assert image_crop_shape((1, 16, 16), (1.0, 0.5, 0.5), (1.0, 0.25, 0.25), 2) == (1, 32, 32)
    x = np.random.default_rng(0).random((2, 3, 1, 32, 32), dtype=np.float32)
    assert resample_crops(x, (1, 16, 16)).shape == (2, 3, 1, 16, 16)
    image, labels = _field(1, voxel=(1.0, 0.25, 0.25))
    result = run_audit(image, labels, _bundle_2d(voxel_size=[1.0, 0.5, 0.5]))
    assert result.cams[1].crop_shape == (1, 32, 32)  # scored on the image grid, 16 px of the model = 32 here
    assert result.cams[1].on_crop_grid().shape == (1, 32, 32)
    bundle = _bundle_2d(voxel_size=[1.0, 0.5, 0.5], crop_mode="masked", padding_value=-3.0)
    seen = []
    bundle.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    run_audit(image, labels, bundle)
    fed = seen[-1]
    assert tuple(fed.shape[-2:]) == (16, 16)  # the model gets its own crop size
    padded = (fed == -3.0).float().mean().item()
    assert 0.3 < padded < 1.0, "outside each cell the model sees the padding value, inside it sees the cell"
