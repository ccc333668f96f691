"""Candidate Grad-CAM target layers at any depth: every module whose output is a 2D or 3D feature map.

One forward pass records each module's output shape: on torch's ``meta`` device (shapes only, no arithmetic,
no memory), or, for a model that cannot run there, on a blank crop. A module with a spatial output (4D
``(B, C, y, x)`` from a 2D model, 5D ``(B, C, z, y, x)`` from a 3D one) called exactly once is a candidate;
:func:`check_target_layer` explains why any other name cannot be one.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

SPATIAL_NDIMS = (4, 5)


class LayerError(ValueError):
    """A target layer that does not exist, is called twice, or has no spatial output; says which to use."""


@dataclass
class LayerInfo:
    """A module, its output shape (channels, [z,] y, x) for one crop, and how many times it ran."""

    name: str
    output_shape: tuple[int, ...]
    calls: int = 1
    padding: bool = False  # a padding module (its output is its input with a border): never a target

    @property
    def depth(self) -> int:
        return self.name.count(".")

    @property
    def collapsed(self) -> bool:
        """A spatial-shaped output with a single voxel (a global pool, a 1×1×1 head): its map is constant."""
        return len(self.output_shape) + 1 in SPATIAL_NDIMS and int(np.prod(self.output_shape[1:])) == 1

    @property
    def spatial(self) -> bool:
        return (self.calls == 1 and not self.padding and len(self.output_shape) + 1 in SPATIAL_NDIMS
                and not self.collapsed)

    @property
    def label(self) -> str:
        if len(self.output_shape) + 1 not in SPATIAL_NDIMS:
            return f"{self.name}  (output {'×'.join(map(str, self.output_shape)) or 'not a tensor'})"
        c, *grid = self.output_shape
        return f"{self.name}  ({c} ch, {'×'.join(map(str, grid))})"


def model_spatial_dims(model) -> int:
    """2 for a model built of 2D convolutions only, else 3."""
    import torch.nn as nn

    kinds = {type(m) for m in model.modules()}
    has_2d = any(issubclass(k, (nn.Conv2d, nn.ConvTranspose2d)) for k in kinds)
    has_3d = any(issubclass(k, (nn.Conv3d, nn.ConvTranspose3d)) for k in kinds)
    return 2 if has_2d and not has_3d else 3


def probe_input_shape(model, crop_shape: Sequence[int], in_channels: int) -> tuple[int, ...]:
    """The shape of one crop as the model takes it: (1, C, z, y, x), or (1, C, y, x) for a 2D model."""
    zyx = [int(s) for s in crop_shape]
    grid = zyx[-2:] if model_spatial_dims(model) == 2 else zyx
    return (1, int(in_channels), *grid)


def _meta_forward(model, shape: tuple[int, ...]) -> None:
    """``model`` run on a ``meta`` tensor of ``shape``, its parameters and buffers swapped for ``meta`` tensors of
    the same shapes for the call (``torch.func.functional_call``): every module's hooks see outputs of the
    true shapes, nothing is computed or allocated, and the model itself is left as it was."""
    import torch
    from torch.func import functional_call

    state = {name: torch.empty_like(t, device="meta") for name, t in model.named_parameters()}
    state.update({name: torch.empty_like(t, device="meta") for name, t in model.named_buffers()})
    functional_call(model, state, (torch.empty(shape, device="meta"),))  # float32, as the real pass and the audit


def _real_forward(model, shape: tuple[int, ...]) -> None:
    """``model`` run on a blank crop of ``shape``: a full forward pass, on the model's device."""
    import torch

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    model(torch.zeros(shape, device=device))


#: model → {(crop, channels, structure) → its LayerInfos}: the shapes are found once per model and crop shape.
_KNOWN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _structure(model) -> tuple:
    """What a module's output shapes depend on besides the input: its modules with their settings (``repr``:
    names, types, kernel sizes, strides …) and every parameter's and buffer's name and shape."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return repr(model), tuple((name, tuple(t.shape)) for name, t in tensors)


def all_module_outputs(model, crop_shape: Sequence[int], in_channels: int) -> list[LayerInfo]:
    """Every named module (any depth) with its output shape and call count, in module order.

    The shapes come from a forward pass on the ``meta`` device; a model that cannot run there (an operator
    without a meta kernel, a value read inside ``forward``, a tensor made on another device) is run once for
    real on a blank crop instead, as a debug record of this module's logger says. They are remembered per
    model, crop shape, channel count and module structure (:func:`_structure`), so later calls cost no pass."""
    key = (tuple(int(s) for s in crop_shape), int(in_channels), _structure(model))
    try:
        known = _KNOWN.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced: no cache
        known = {}
    if key not in known:
        if len(known) >= 4:  # a model edited again and again: its old shapes are of no further use
            known.clear()
        known[key] = _module_outputs(model, crop_shape, in_channels)
    return [replace(info) for info in known[key]]


def _module_outputs(model, crop_shape: Sequence[int], in_channels: int) -> list[LayerInfo]:
    import torch

    seen: dict[str, list[tuple[int, ...]]] = {}

    def record(name, output):
        seen.setdefault(name, []).append(tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ())

    shape = probe_input_shape(model, crop_shape, in_channels)
    was_training = model.training
    model.eval()
    try:
        for run in (_meta_forward, _real_forward):
            seen.clear()
            handles = [module.register_forward_hook(lambda m, i, o, n=name: record(n, o))
                       for name, module in model.named_modules() if name]
            try:
                with torch.no_grad():
                    run(model, shape)
                break
            except Exception as error:
                if run is _real_forward:
                    if isinstance(error, RuntimeError):
                        raise LayerError(f"The model does not run on a crop of shape {shape} (batch, channels, "
                                         f"spatial): {error}. Check the checkpoint's crop_shape and channel_names."
                                         ) from error
                    raise
                log.debug("Layer shapes of %s: the meta-device pass failed (%s: %s); running one real forward "
                          "pass on a blank crop of shape %s instead.", type(model).__name__, type(error).__name__,
                          error, shape)
            finally:
                for h in handles:
                    h.remove()
    finally:
        model.train(was_training)
    infos = []
    for name, module in model.named_modules():
        if name in seen:
            infos.append(LayerInfo(name, seen[name][0], len(seen[name]), "Pad" in type(module).__name__))
    return infos


def list_target_layers(model, crop_shape: Sequence[int], in_channels: int) -> list[LayerInfo]:
    """Modules at any depth whose output is a spatial feature map, run once per forward pass, in module order."""
    return [info for info in all_module_outputs(model, crop_shape, in_channels) if info.spatial]


def check_target_layer(model, name: str, crop_shape: Sequence[int], in_channels: int) -> LayerInfo:
    """The :class:`LayerInfo` of ``name``, or a :class:`LayerError` saying why it cannot be a target."""
    infos = {i.name: i for i in all_module_outputs(model, crop_shape, in_channels)}
    candidates = [i.name for i in infos.values() if i.spatial]
    hint = f" Candidates: {', '.join(candidates[:12])}{' …' if len(candidates) > 12 else ''} (gradcamo layers MODEL)."
    info = infos.get(name)
    if info is None:
        exists = name in dict(model.named_modules())
        why = "never runs in the forward pass" if exists else "does not exist in the model"
        raise LayerError(f"Target layer '{name}' {why}.{hint}")
    if info.calls > 1:
        raise LayerError(f"Target layer '{name}' runs {info.calls} times per forward pass (a shared module), so its "
                         f"map is ambiguous; pick a module that runs once.{hint}")
    if info.padding:
        raise LayerError(f"Target layer '{name}' is a padding module ({info.label}); pick the layer it pads for.{hint}")
    if info.collapsed:
        raise LayerError(f"Target layer '{name}' has a single-voxel feature map ({info.label}), e.g. a global pool or "
                         "a layer after it: its Grad-CAM is constant, so every cell would score chance. Pick a "
                         f"layer whose map still has rows and columns.{hint}")
    if not info.spatial:
        raise LayerError(f"Target layer '{name}' has no spatial feature map: {info.label}.{hint}")
    return info


def default_target_layer(layers: Sequence[LayerInfo]) -> str:
    """The most downsampled layer that still resolves more than one z-plane (the shallowest, then last, of ties).

    In 2D (or when every layer collapses z) the most downsampled layer with more than one row is used.
    """
    layers = [l for l in layers if l.spatial]
    if not layers:
        raise LayerError("The model has no layer with a 2D or 3D feature map to compute Grad-CAM on.")
    grid = [(l, l.output_shape[1:] if len(l.output_shape) == 4 else (1, *l.output_shape[1:])) for l in layers]
    pool = [(l, g) for l, g in grid if g[0] > 1 and g[1] > 1]
    pool = pool or [(l, g) for l, g in grid if g[1] > 1] or grid
    smallest = min(int(np.prod(g)) for _, g in pool)
    pool = [l for l, g in pool if int(np.prod(g)) == smallest]
    shallowest = min(l.depth for l in pool)
    return [l for l in pool if l.depth == shallowest][-1].name


def layer_tree(model, crop_shape: Sequence[int], in_channels: int, chosen: str | None = None) -> list[str]:
    """Text lines of the module tree: candidates with their output shape, their parents as headings,
    ``*`` on ``chosen`` (shown with the reason if it cannot be a target)."""
    infos = {i.name: i for i in all_module_outputs(model, crop_shape, in_channels)}
    keep = {n for n, i in infos.items() if i.spatial}
    parents = {".".join(n.split(".")[:k]) for n in keep for k in range(1, n.count(".") + 1)}
    lines = []
    for name, _ in model.named_modules():
        if name not in keep and name not in parents and name != chosen or not name:
            continue
        info = infos.get(name)
        mark = "* " if name == chosen else "  "
        text = info.label if name in keep else name
        if name == chosen and name not in keep:
            why = ("never runs in the forward pass" if info is None else "called twice" if info.calls > 1
                   else "a padding module" if info.padding else "a single-voxel map" if info.collapsed
                   else "no spatial output")
            text = f"{info.label if info else name}  ← stored layer, not usable: {why}"
        lines.append(mark + "  " * name.count(".") + text)
    if chosen and chosen not in dict(model.named_modules()):
        lines.append(f"* {chosen}  ← stored layer, not in this model")
    return lines


def crops_as_input(batch, spatial_dims: int):
    """Crops (B, C, z, y, x) as the model takes them: unchanged for a 3D model, (B, C, y, x) for a 2D one
    (which needs one-plane crops here; the audit explains deeper crops plane by plane)."""
    if spatial_dims == 3:
        return batch
    if batch.shape[2] != 1:
        raise ValueError(f"A 2D model takes one-plane crops (z = 1), got {batch.shape[2]} planes; "
                         "use --crop-shape 1 Y X.")
    return batch[:, :, 0]
