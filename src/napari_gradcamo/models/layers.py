"""Candidate Grad-CAM target layers at any depth: every module whose output is a 2D or 3D feature map.

One forward pass on a blank crop records each module's outputs. A module with a spatial output (4D
``(B, C, y, x)`` from a 2D model, 5D ``(B, C, z, y, x)`` from a 3D one) called exactly once is a candidate;
:func:`check_target_layer` explains why any other name cannot be one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

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


def all_module_outputs(model, crop_shape: Sequence[int], in_channels: int) -> list[LayerInfo]:
    """Every named module (any depth) with its output shape and call count, in module order."""
    import torch

    seen: dict[str, list] = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, []).append(o))
        for name, module in model.named_modules() if name
    ]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        shape = probe_input_shape(model, crop_shape, in_channels)
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    except RuntimeError as error:
        raise LayerError(f"The model does not run on a crop of shape {shape} (batch, channels, spatial): {error}. "
                         "Check the checkpoint's crop_shape and channel_names.") from error
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    infos = []
    for name, module in model.named_modules():
        if name not in seen:
            continue
        first = seen[name][0]
        shape = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else ()
        infos.append(LayerInfo(name, shape, len(seen[name]), "Pad" in type(module).__name__))
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
