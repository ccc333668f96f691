"""The layer shapes the layer check uses come from a pass on torch's meta device (no arithmetic), or — for a
model that cannot run there — from one real forward pass; either way they equal the shapes a real forward pass
on a crop gives, for every model family the project supports, and they are found once per model."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.backbones import efficientnet, small_cnn
from napari_gradcamo.models.layers import (
    LayerError,
    all_module_outputs,
    check_target_layer,
    default_target_layer,
    list_target_layers,
)
from napari_gradcamo.models.metadata import ModelMetadata

LOGGER = "napari_gradcamo.models.layers"


def _monai(name):
    from monai.networks.nets import DenseNet, ResNet

    if name == "resnet":
        return ResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=3, n_input_channels=5, num_classes=2)
    return DenseNet(3, 5, 2, init_features=8, growth_rate=8, block_config=(2, 2))


def _resnet18():
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=2)


#: name → (model factory, crop (z, y, x), input channels): the families of benchmarks/families.py and
#: tests/models/test_breadth.py, plus the demo's small CNN at its width and the crop VAE.
FAMILIES = {
    "small-cnn-3d (demo)": (lambda: build_model(ModelMetadata("small-cnn-3d", ["a", "b"], list("12345"), [8, 32, 32])),
                            (8, 32, 32), 5),
    "small-cnn-2d": (lambda: small_cnn(5, 2, width=8, dims=2), (1, 64, 64), 5),
    "binary-1-logit-3d": (lambda: small_cnn(5, 1, width=8), (8, 32, 32), 5),
    "monai-resnet-3d": (lambda: _monai("resnet"), (8, 32, 32), 5),
    "monai-densenet-3d": (lambda: _monai("densenet"), (8, 32, 32), 5),
    "efficientnet-b0-3d": (lambda: efficientnet("efficientnet-b0", 5, 2, (21, 64, 64)), (21, 64, 64), 5),
    "torchvision-resnet18-2d": (_resnet18, (1, 64, 64), 3),
    "vae-3d": (lambda: build_model(ModelMetadata("vae-3d", ["z0", "z1"], list("12345"), [8, 32, 32])),
               (8, 32, 32), 5),
}


def real_shapes(model, crop, channels) -> dict[str, tuple[tuple[int, ...], int]]:
    """name → (output shape without the batch axis, calls), from a real forward pass on a random crop, recorded
    here with hooks of this test's own (not the package's code)."""
    seen: dict[str, list] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: seen.setdefault(n, []).append(
        tuple(o.shape[1:]) if isinstance(o, torch.Tensor) else ())) for name, m in model.named_modules() if name]
    grid = crop[-2:] if any(isinstance(m, nn.Conv2d) for m in model.modules()) else crop
    try:
        with torch.no_grad():
            model.eval()(torch.rand(1, channels, *grid))
    finally:
        for h in handles:
            h.remove()
    return {name: (shapes[0], len(shapes)) for name, shapes in seen.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_inferred_shapes_equal_a_real_forward_pass(family, caplog):
    build, crop, channels = FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        inferred = all_module_outputs(model, crop, channels)
    assert not [r for r in caplog.records if r.name == LOGGER], "the meta-device pass fell back to a real one"
    real = real_shapes(model, crop, channels)
    assert {i.name: (i.output_shape, i.calls) for i in inferred} == real
    layer = default_target_layer(list_target_layers(model, crop, channels))
    assert check_target_layer(model, layer, crop, channels).output_shape == real[layer][0]


class ReadsAValue(nn.Module):
    """A model whose forward reads a number out of a tensor (``.item()``), which a meta tensor does not have."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool3d(2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.pool(self.conv(x))
        if y.abs().max().item() > 1e6:  # a data-dependent branch
            y = y / 2
        return self.head(y.mean((2, 3, 4)))


def test_a_model_the_meta_device_cannot_run_falls_back_to_a_real_pass(caplog):
    model = ReadsAValue()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        infos = {i.name: i for i in all_module_outputs(model, (4, 8, 8), 2)}
    assert any("real forward pass" in r.getMessage() and "ReadsAValue" in r.getMessage() for r in caplog.records)
    assert infos["conv"].output_shape == (4, 4, 8, 8)
    assert infos["pool"].output_shape == (4, 2, 4, 4)
    assert infos["head"].output_shape == (2,)  # runs after the value is read: recorded by the real pass only
    assert check_target_layer(model, "pool", (4, 8, 8), 2).output_shape == (4, 2, 4, 4)
    # the failed meta pass leaves the model as it was: real weights on the CPU, no hooks left behind
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_a_model_that_runs_neither_way_is_a_layer_error():
    model = ReadsAValue()
    with pytest.raises(LayerError, match=r"does not run on a crop of shape \(1, 3, 4, 8, 8\).*channel_names"):
        all_module_outputs(model, (4, 8, 8), 3)  # the conv takes 2 channels


class Counting(nn.Module):
    def __init__(self, stride=1):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, stride=stride, padding=1)
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        return self.conv(x).mean((2, 3, 4))


def test_shapes_are_found_once_per_model_and_again_when_it_changes():
    model = Counting().train()
    first = all_module_outputs(model, (4, 8, 8), 1)
    assert model.passes == 1 and model.training  # one (meta) pass, the model's mode restored
    first[0].output_shape = (0,)  # a caller editing what it got does not edit what is remembered
    assert all_module_outputs(model, (4, 8, 8), 1)[0].output_shape == (2, 4, 8, 8)
    assert model.passes == 1
    assert all_module_outputs(model, (2, 8, 8), 1)[0].output_shape == (2, 2, 8, 8)  # another crop shape
    assert model.passes == 2
    model.conv.stride = (2, 2, 2)  # an edited model (its repr changes): found again, not the stale shape
    assert all_module_outputs(model, (4, 8, 8), 1)[0].output_shape == (2, 2, 4, 4)
    assert model.passes == 3
    assert all_module_outputs(Counting(), (4, 8, 8), 1)[0].output_shape == (2, 4, 8, 8)  # another model
