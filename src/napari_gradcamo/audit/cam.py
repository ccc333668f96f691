"""Batched raw Grad-CAM maps through pytorch-grad-cam, with frozen weights and a short backward pass.

pytorch-grad-cam normally backpropagates into every weight and returns maps min-max normalised and
resized with a cubic zoom, which changes Σcam·M/Σcam. Here the weights are frozen, the target layer's
output is re-rooted (so the backward pass stops there), and each method's raw map is taken from its own
``get_cam_image`` and kept non-negative; :func:`upsample` brings it to the crop grid trilinearly.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from napari_gradcamo.crops.maps import upsample  # noqa: F401  (the audit's modules import it from here)
from napari_gradcamo.models.layers import model_spatial_dims

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam")
#: Tried in this order, from the same activations and gradients (no extra pass), on a crop whose map is
#: zero everywhere: a zero map says the method found no positive evidence, not where the model looks.
FALLBACK_METHODS = ("hirescam", "gradcam++", "layercam")
#: Methods pytorch-grad-cam runs on 2D models only (they perturb the input image plane by plane).
CAM_METHODS_2D = ("scorecam", "ablationcam")


def cam_class(method: str, spatial_dims: int = 3):
    """The pytorch-grad-cam class for a method name (ScoreCAM and AblationCAM only for 2D models)."""
    import pytorch_grad_cam as pgc

    classes = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
        "xgradcam": pgc.XGradCAM,
        "eigencam": pgc.EigenCAM,
    }
    if spatial_dims == 2:
        classes.update(scorecam=pgc.ScoreCAM, ablationcam=pgc.AblationCAM)
    key = method.lower().replace("_", "").replace("-", "").replace("plusplus", "++")
    if key in CAM_METHODS_2D and spatial_dims != 2:
        raise ValueError(f"CAM method '{method}' is 2D-only in pytorch-grad-cam (2D models); use one of "
                         f"{', '.join(CAM_METHODS)} on this 3D model.")
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


#: ``precision`` settings of the audit: fp32 (exact), bf16 (CPUs with AMX/AVX512-BF16, CUDA), fp16 (CUDA).
PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device):
    """The autocast dtype for ``precision`` on ``device`` (None for fp32); refuses fp16 off CUDA.

    Reduced precision changes every score a little: ``benchmarks/precision.py`` measures by how much
    against fp32 (median and maximum absolute change) on the demo field and a real-sized one.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on a CPU use bf16 (fast on CPUs with AMX or "
                         "AVX512-BF16) or fp32.")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def planes_as_images(x, spatial_dims: int):
    """A batch (B, C, z, y, x) as the model takes it: unchanged for a 3D model; for a 2D model each z-plane
    its own image, (B·z, C, y, x) (:func:`per_crop` brings the planes' answers back to one per crop)."""
    if spatial_dims != 2:
        return x
    n, c, planes = x.shape[:3]
    return x.permute(0, 2, 1, 3, 4).reshape(n * planes, c, *x.shape[3:])


def per_crop(probs: np.ndarray, n: int, spatial_dims: int) -> np.ndarray:
    """Class probabilities per crop: a 2D model's planes (rows of :func:`planes_as_images`) averaged."""
    return probs.reshape(n, -1, probs.shape[-1]).mean(axis=1) if spatial_dims == 2 else probs


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
    #: Methods tried, in order, on a crop whose map is zero everywhere (:data:`FALLBACK_METHODS`; () for none).
    #: :attr:`last_methods` says per crop of the last ``compute`` which method's map it returned ("" when
    #: every map was zero).
    fallback_methods: tuple[str, ...] = FALLBACK_METHODS

    def __init__(self, model, target_layer: str, method: str = "gradcam", device=None, head: str = "softmax",
                 precision: str = "fp32"):
        self.model = model
        self.target_layer = target_layer
        self.method = method
        self.head = head
        self.spatial_dims = model_spatial_dims(model)
        self.device = pick_device(device)
        self.autocast_dtype = autocast_dtype(precision, self.device)
        self._cam = None
        self._kept = None  # the target layer's output of the last forward pass (a leaf: backward stops there)
        self._handles = []
        self._grad_flags: list[bool] = []
        self._layout: _SplitLayout | None = None
        self._fallbacks: dict[str, object] = {}
        self.last_methods: list[str] = []

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
        self._cam = cam_class(self.method, self.spatial_dims)(self.model, [layer])
        if hasattr(self._cam, "batch_size"):
            self._cam.batch_size = 64  # ScoreCAM/AblationCAM: forward passes per chunk of perturbed inputs
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
        # a copy of the leaf goes on: an in-place op after the layer (DenseNet's ReLU(inplace=True)) cannot run on
        # a leaf, and the CAM's hooks see the layer's own output (hooks registered before an in-place change
        # receive the gradient with respect to the value before it)
        self._kept = out.requires_grad_(True)
        return self._kept.clone()

    def compute(self, batch: np.ndarray, target_classes: Sequence[int | None] | None = None):
        """Return (probabilities (B, K), targets (B,), raw non-negative maps (B, z', y', x')).

        ``batch`` is (B, C, z, y, x). A 2D model sees each z-plane as its own image: its planes' class
        probabilities are averaged per crop, every plane's map explains the crop's target class, and the
        maps are stacked back along z (one plane for a 2D crop).
        """
        import torch

        from napari_gradcamo.models.heads import chosen_targets, probabilities, targets_for

        cam = self._cam
        if not self.channels_last:
            self._drop_layout()
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        n, planes = x.shape[0], x.shape[2]
        if self.spatial_dims == 2:
            x = x.permute(0, 2, 1, 3, 4).reshape(n * planes, x.shape[1], *x.shape[3:])
        x = self._in_layout(x)
        cast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                else contextlib.nullcontext())
        with torch.enable_grad():
            with cast:  # reduced precision for the layers' arithmetic only; maps and scores stay float32
                logits = cam.activations_and_grads(x)
            logits = logits.float()
            probs = probabilities(self.head, logits)
            if self.spatial_dims == 2:
                probs = probs.reshape(n, planes, -1).mean(axis=1)
            targets_idx = chosen_targets(probs, target_classes)
            per_row = np.repeat(targets_idx, planes) if self.spatial_dims == 2 else targets_idx
            targets = targets_for(self.head, per_row)
            if cam.uses_gradients:
                loss = sum(t(o) for t, o in zip(targets, logits))
                loss.backward()
            # float(): no copy for float32; lets the engine run under autocast (bf16/fp16 activations)
            # the layer's own output: pytorch-grad-cam keeps a view of the tensor passed on, which an in-place op
            # after the layer (ReLU(inplace=True)) would have changed
            activations = self._kept.detach().float().cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].float().numpy() if cam.uses_gradients else None
            layer = cam.target_layers[0]
            raw = cam.get_cam_image(x, layer, targets, activations, grads, False)
        cam.activations_and_grads.clear()
        raw = np.maximum(np.asarray(raw, dtype=np.float32), 0.0)
        if self.spatial_dims == 2:
            raw = raw.reshape(n, planes, *raw.shape[1:])
        raw = self._fall_back(raw, x, layer, targets, activations, grads)
        return probs, targets_idx, raw

    def _fall_back(self, raw, x, layer, targets, activations, grads):
        """Replace each crop's all-zero map by the first :attr:`fallback_methods` map that is not, computed
        from the same activations and gradients; record per crop the method used in :attr:`last_methods`."""
        n = len(raw)
        zero = raw.reshape(n, -1).sum(1) <= 0
        methods = [self.method] * n
        if zero.any() and grads is not None:
            for name in self.fallback_methods:
                if name == self.method or not zero.any():
                    continue
                other = self._fallback_cam(name)
                alt = np.maximum(np.asarray(other.get_cam_image(x, layer, targets, activations, grads, False),
                                            dtype=np.float32), 0.0).reshape(raw.shape)
                use = zero & (alt.reshape(n, -1).sum(1) > 0)
                raw[use] = alt[use]
                for i in np.flatnonzero(use):
                    methods[i] = name
                zero &= ~use
        self.last_methods = ["" if z else m for z, m in zip(zero, methods)]
        return raw

    def _fallback_cam(self, name: str):
        """pytorch-grad-cam's object for method ``name``, its own hooks released (only its formula is used)."""
        if name not in self._fallbacks:
            other = cam_class(name, self.spatial_dims)(self.model, [get_module(self.model, self.target_layer)])
            other.activations_and_grads.release()
            self._fallbacks[name] = other
        return self._fallbacks[name]


    def _in_layout(self, x):
        """The input in the memory layout the engine runs the layers up to the target in."""
        import torch

        if self._layout is not None:
            self._layout.after_target = False
            if x.ndim == 5:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (B, K) of an already normalised batch (B, C, z, y, x) as the model's head means
        them, without maps (no backward pass); a 2D model's planes are averaged per crop, as in :meth:`compute`."""
        import torch

        from napari_gradcamo.models.heads import probabilities

        if not self.channels_last:
            self._drop_layout()
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        n = x.shape[0]
        x = self._in_layout(planes_as_images(x, self.spatial_dims))  # a 2D model: plane by plane, as compute
        with torch.no_grad():
            logits = self.model(x)
        self._cam.activations_and_grads.clear()  # the CAM's hooks saw this pass: keep them empty for compute
        return per_crop(probabilities(self.head, logits), n, self.spatial_dims)


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
