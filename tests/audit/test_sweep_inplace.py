"""The one-pass layer sweep on a network with in-place activations after the hooked layers (as MONAI's
DenseNet has): it runs, and each layer's map equals the single-layer engine's map at that layer."""

import numpy as np
import torch

from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.layer_sweep import MultiLayerCam


class InplaceNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(2, 4, 3, padding=1)
        self.relu_a = torch.nn.ReLU(inplace=True)
        self.b = torch.nn.Conv3d(4, 4, 3, padding=1)
        self.relu_b = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu_b(self.b(self.relu_a(self.a(x))))
        return self.head(x.mean(dim=(2, 3, 4)))


def _reference(model, x, layer):
    """Grad-CAM by hand on a copy whose ReLUs are not in place: the layer's output and its gradient."""
    import copy

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    store = {}
    getattr(m, layer).register_forward_hook(lambda mod, i, o: store.__setitem__("a", o))
    logits = m(torch.from_numpy(x))
    grad, = torch.autograd.grad(logits.gather(1, logits.argmax(1)[:, None]).sum(), store["a"])
    return torch.relu((grad.mean(dim=(2, 3, 4), keepdim=True) * store["a"].detach()).sum(1)).numpy()


def test_sweep_survives_inplace_activations_and_matches_the_engine():
    model = InplaceNet().eval()
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 8, 8)).astype(np.float32)
    with MultiLayerCam(model, ["a", "b"], device="cpu") as sweep:
        _, targets, maps = sweep.compute(x)
    for layer in ("a", "b"):
        with CamEngine(model, layer, "gradcam", "cpu") as engine:
            engine.channels_last = False
            _, used, raw = engine.compute(x, list(targets))
        np.testing.assert_allclose(maps[layer], raw, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(raw, _reference(model, x, layer), rtol=1e-4, atol=1e-8)
