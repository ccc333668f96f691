"""Batched raw Grad-CAM maps through pytorch-grad-cam, with frozen weights and a short backward pass.

pytorch-grad-cam normally backpropagates into every weight and returns maps min-max normalised and
resized with a cubic zoom, which changes Σcam·M/Σcam. Here the weights are frozen, the target layer's
output is re-rooted (so the backward pass stops there), and each method's raw map is taken from its own
``get_cam_image`` and kept non-negative; :func:`upsample` brings it to the crop grid trilinearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam")


def cam_class(method: str):
    """The pytorch-grad-cam class for a method name (3D-capable methods only)."""
    import pytorch_grad_cam as pgc

    classes = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
        "xgradcam": pgc.XGradCAM,
        "eigencam": pgc.EigenCAM,
    }
    key = method.lower().replace("_", "").replace("-", "").replace("plusplus", "++")
    if key not in classes:
        raise ValueError(
            f"Unknown CAM method '{method}'. Methods that work on 3D models: {', '.join(CAM_METHODS)} "
            "(ScoreCAM, AblationCAM and FullGrad are 2D-only in pytorch-grad-cam)."
        )
    return classes[key]


def pick_device(device: str | None = "auto"):
    """``"auto"`` picks CUDA, then Apple MPS, then CPU."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


@dataclass
class LayerInfo:
    """A candidate target layer and its output shape (channels, z, y, x) for one crop."""

    name: str
    output_shape: tuple[int, ...]

    @property
    def label(self) -> str:
        c, *zyx = self.output_shape
        return f"{self.name}  ({c} ch, {'×'.join(map(str, zyx))})"


def list_target_layers(model, crop_shape: Sequence[int], in_channels: int) -> list[LayerInfo]:
    """Layers (up to two levels deep) whose output is a 3D feature map, in the model's module order."""
    import torch

    seen: dict[str, list] = {}
    handles = []
    for name, module in model.named_modules():
        if not name or name.count(".") > 1 or "padding" in name:
            continue
        handles.append(module.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, []).append(o)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *crop_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = []
    order = [name for name, _ in model.named_modules() if name in seen]
    for name, outputs in ((n, seen[n]) for n in order):
        if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor) or outputs[0].ndim != 5:
            continue  # shared modules (called twice) cannot be a unique target
        layers.append(LayerInfo(name, tuple(outputs[0].shape[1:])))
    return layers


def default_target_layer(layers: Sequence[LayerInfo]) -> str:
    """The most downsampled layer that still resolves more than one z-plane (the shallowest, then last, of ties).

    In 2D (or when every layer collapses z) the most downsampled layer with more than one row is used.
    """
    if not layers:
        raise ValueError("The model has no layer with a 3D feature map to compute Grad-CAM on.")
    pool = [l for l in layers if l.output_shape[1] > 1 and l.output_shape[2] > 1]
    pool = pool or [l for l in layers if l.output_shape[2] > 1] or list(layers)
    smallest = min(int(np.prod(l.output_shape[1:])) for l in pool)
    pool = [l for l in pool if int(np.prod(l.output_shape[1:])) == smallest]
    shallowest = min(l.name.count(".") for l in pool)
    return [l for l in pool if l.name.count(".") == shallowest][-1].name


def get_module(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(f"The model has no layer '{name}'; pick one of list_target_layers().") from error


class CamEngine:
    """Compute raw Grad-CAM maps for batches of crops.

    Use as a context manager: weights are frozen and hooks installed on enter, restored on exit.
    """

    #: On CPU, run the layers of a 3D model up to the target layer in the channels-last-3D memory layout
    #: (oneDNN's 3D convolutions run 1.3–1.7× faster in it, see benchmarks/) and the layers after it in the
    #: default layout (their backward pass, depthwise convolutions above all, is several times slower
    #: channels-last). The maps only change by float rounding; weights get their own layout back on exit.
    #: Set to False on an instance to opt out (before ``with``, or inside it: from the next ``compute``).
    channels_last: bool = True

    def __init__(self, model, target_layer: str, method: str = "gradcam", device=None):
        self.model = model
        self.target_layer = target_layer
        self.method = method
        self.device = pick_device(device)
        self._cam = None
        self._handles = []
        self._grad_flags: list[bool] = []
        self._layout: _SplitLayout | None = None

    def __enter__(self) -> "CamEngine":
        self.model.to(self.device).eval()
        params = list(self.model.parameters())
        self._grad_flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        if self.channels_last and self.device.type == "cpu" and _has_conv3d(self.model):
            self._layout = _SplitLayout(self.model)
        layer = get_module(self.model, self.target_layer)
        # Registered before the CAM's own hooks, so they see (and hook gradients on) the re-rooted tensor.
        self._handles.append(layer.register_forward_hook(self._reroot))
        self._cam = cam_class(self.method)(self.model, [layer])
        return self

    def __exit__(self, *exc) -> None:
        if self._cam is not None:
            self._cam.activations_and_grads.release()
        for h in self._handles:
            h.remove()
        for p, flag in zip(self.model.parameters(), self._grad_flags):
            p.requires_grad_(flag)
        self._drop_layout()
        self._handles.clear()

    def _drop_layout(self) -> None:
        if self._layout is not None:
            self._layout.restore()
            self._layout = None

    def _reroot(self, module, inputs, output):
        """Detach the target layer's output so backward stops here (frozen weights need no deeper grads)."""
        out = output.detach()
        if self._layout is not None:
            out = out.contiguous()  # the layers after the target layer run in the default layout
            self._layout.after_target = True
        return out.requires_grad_(True)

    def compute(self, batch: np.ndarray, target_classes: Sequence[int | None] | None = None):
        """Return (probabilities (B, K), targets (B,), raw non-negative maps (B, z', y', x'))."""
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = self._cam
        if not self.channels_last:
            self._drop_layout()
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        if self._layout is not None:
            self._layout.after_target = False
            if x.ndim == 5:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.enable_grad():
            logits = cam.activations_and_grads(x)
            probs = torch.softmax(logits.detach().float(), dim=1).cpu().numpy()
            predicted = probs.argmax(1)
            chosen = list(target_classes) if target_classes is not None else [None] * len(batch)
            targets_idx = np.array([p if c is None else int(c) for p, c in zip(predicted, chosen)])
            targets = [ClassifierOutputTarget(int(c)) for c in targets_idx]
            if cam.uses_gradients:
                loss = sum(t(o) for t, o in zip(targets, logits))
                loss.backward()
            # float(): no copy for float32; lets the engine run under autocast (bf16/fp16 activations)
            activations = cam.activations_and_grads.activations[0].float().numpy()
            grads = cam.activations_and_grads.gradients[0].float().numpy() if cam.uses_gradients else None
            layer = cam.target_layers[0]
            raw = cam.get_cam_image(x, layer, targets, activations, grads, False)
        cam.activations_and_grads.clear()
        return probs, targets_idx, np.maximum(np.asarray(raw, dtype=np.float32), 0.0)


    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (B, K) of an already normalised batch, without maps (no backward pass)."""
        import torch

        if not self.channels_last:
            self._drop_layout()
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        if self._layout is not None:
            self._layout.after_target = False
            if x.ndim == 5:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.no_grad():
            logits = self.model(x)
        self._cam.activations_and_grads.clear()  # the CAM's hooks saw this pass: keep them empty for compute
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _has_conv3d(model) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Conv3d) for m in model.modules())


class _SplitLayout:
    """Channels-last-3D weights before the target layer, the model's own layout after it.

    Every 5D parameter and buffer is converted on creation; a pre-hook on each module that owns one puts
    its weights back the first time the module runs after the target layer (``after_target``), so the
    backward pass, which runs through those modules only, keeps its fast kernels. :meth:`restore` puts
    every weight back.
    """

    def __init__(self, model):
        import torch

        self.after_target = False
        self._originals: dict[int, tuple] = {}
        self._handles = []
        fmt = torch.channels_last_3d
        for module in model.modules():
            own = [t for t in _own_tensors(module) if t.ndim == 5]
            if not own:
                continue
            for t in own:
                if id(t) not in self._originals and not t.is_contiguous(memory_format=fmt):
                    self._originals[id(t)] = (t, t.data)
                    t.data = t.data.contiguous(memory_format=fmt)
            self._handles.append(module.register_forward_pre_hook(self._before_module))

    def _before_module(self, module, args):
        if self.after_target:
            for t in _own_tensors(module):
                entry = self._originals.pop(id(t), None)
                if entry is not None:
                    t.data = entry[1]

    def restore(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for t, original in self._originals.values():
            t.data = original
        self._originals.clear()


def _own_tensors(module) -> list:
    return list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))


def upsample(raw: np.ndarray, crop_shape: Sequence[int]) -> np.ndarray:
    """Trilinear upsampling of raw maps (B, z', y', x') to the crop grid (B, z, y, x), kept ≥ 0."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(raw, dtype=torch.float32)[:, None]
    out = F.interpolate(t, size=tuple(int(s) for s in crop_shape), mode="trilinear", align_corners=False)
    return out[:, 0].clamp_min_(0.0).numpy()
