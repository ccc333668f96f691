"""The networks: a Palette-style conditional U-Net (diffusers) and a classifier of noisy stains.

* :func:`build_unet` — ``diffusers.UNet2DModel``; input = noisy stains ``y_t`` concatenated with the
  brightfield condition ``x``; output = the clean stains ``y_0`` (default, ``prediction="sample"``: learns
  in hundreds rather than hundreds of thousands of steps on a CPU) or the noise (``"epsilon"``, as in the
  paper); sampling converts either to the noise estimate the schedulers and the guidance use.  ``resnet_time_scale_shift="scale_shift"``
  makes every residual block apply AdaGN (``(1 + s)·GroupNorm(h) + b``, ``[s, b]`` projected from the
  timestep embedding, plus the class embedding when ``n_classes`` is given).  A labelled U-Net has one
  extra "no label" class (index ``n_classes``), used for label dropout in training and for sampling
  without a label.
* :class:`NoisyClassifier` — ``p(k | y_t)``: the same kind of downsampling branch (diffusers' down blocks
  with AdaGN on the timestep) plus a pooled linear head.  It is a separate small network, not the
  U-Net's own encoder, so that one classifier can guide both the unlabelled and the labelled U-Net, is
  trained once and cheaply, and is a plain classifier that Grad-CAM can audit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

PREDICTIONS = ("sample", "epsilon")


class VirtualStainError(ValueError):
    """A virtual-staining input or checkpoint cannot be used; the message names the problem and the fix."""


@dataclass
class UNetConfig:
    """Size of the denoising U-Net (defaults: CPU scale, 32x32 to 64x64 crops)."""

    stain_channels: int = 5
    condition_channels: int = 3
    widths: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    groups: int = 8
    n_classes: int | None = None  # None: unlabelled (Palette); else AdaGN class embedding (+1 "no label")
    prediction: str = "sample"  # what the U-Net outputs: "sample" (the clean stains y_0) or "epsilon" (the noise)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise VirtualStainError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}.")
        _check_int(self.stain_channels, "stain_channels", 1)
        _check_int(self.condition_channels, "condition_channels", 1)
        _check_int(self.layers_per_block, "layers_per_block", 1)
        _check_int(self.groups, "groups", 1)
        if not isinstance(self.widths, (list, tuple)) or not self.widths:
            raise VirtualStainError(f"widths must be a non-empty list of channel counts, got {self.widths!r}.")
        self.widths = [int(_check_int(w, "widths[i]", 1)) for w in self.widths]
        if any(w % self.groups for w in self.widths):
            raise VirtualStainError(f"every width {self.widths} must be divisible by groups={self.groups}.")
        if self.n_classes is not None:
            _check_int(self.n_classes, "n_classes", 1)


@dataclass
class ClassifierConfig:
    """Size of the noisy-stain classifier."""

    stain_channels: int = 5
    n_classes: int = 2
    widths: list[int] = field(default_factory=lambda: [32, 64, 64])
    groups: int = 8

    def __post_init__(self):
        _check_int(self.stain_channels, "stain_channels", 1)
        _check_int(self.n_classes, "n_classes", 2)
        _check_int(self.groups, "groups", 1)
        if not isinstance(self.widths, (list, tuple)) or not self.widths:
            raise VirtualStainError(f"widths must be a non-empty list of channel counts, got {self.widths!r}.")
        self.widths = [int(_check_int(w, "widths[i]", 1)) for w in self.widths]


def check_names(names, what: str) -> list[str]:
    """Non-empty, distinct names (``VirtualStainError`` naming the repeated or blank one)."""
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise VirtualStainError(f"{what} must be a non-empty list of names, got {names!r}.")
    seen = set()
    for name in names:
        key = name.strip().lower()
        if not key:
            raise VirtualStainError(f"{what} {list(names)} holds a blank name; give every class a name.")
        if key in seen:
            raise VirtualStainError(f"{what} {list(names)} names {name!r} twice; each name must be distinct "
                                    "(ignoring case), or two classes would share one label.")
        seen.add(key)
    return list(names)


def non_finite_weights(module) -> list[str]:
    """Names of the parameters and buffers of ``module`` that hold NaN or inf (empty when all are finite)."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VirtualStainError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def config_from_dict(cls, data: Any, what: str):
    """Rebuild a config dataclass from JSON, refusing unknown or missing keys."""
    if not isinstance(data, dict):
        raise VirtualStainError(f"{what} must be a JSON object, got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VirtualStainError(f"{what} has unknown keys {unknown}; known keys are {sorted(known)}.")
    try:
        return cls(**data)
    except TypeError as error:
        raise VirtualStainError(f"{what} is invalid: {error}.") from error


def config_to_dict(config) -> dict:
    return asdict(config)


def require_diffusers():
    """The diffusers package, or a message naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as error:
        raise VirtualStainError(
            "virtual staining needs diffusers and torchmetrics: pip install 'napari-gradcamo[virtual-stain]'."
        ) from error
    return diffusers


def build_unet(config: UNetConfig) -> nn.Module:
    """A ``diffusers.UNet2DModel`` with AdaGN residual blocks (no attention: CPU scale)."""
    UNet2DModel = require_diffusers().UNet2DModel

    n = len(config.widths)
    return UNet2DModel(
        in_channels=config.stain_channels + config.condition_channels,
        out_channels=config.stain_channels,
        block_out_channels=tuple(config.widths),
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.groups,
        add_attention=False,
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=None if config.n_classes is None else config.n_classes + 1,
    )


class NoisyClassifier(nn.Module):
    """``log p(k | y_t, t)`` from noisy stains: timestep-conditioned down blocks + pooled linear head."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        require_diffusers()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import get_down_block

        self.config = config
        w0 = config.widths[0]
        temb = 4 * w0
        self.time_proj = Timesteps(w0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(w0, temb)
        self.conv_in = nn.Conv2d(config.stain_channels, w0, 3, padding=1)
        blocks, previous = [], w0
        for i, width in enumerate(config.widths):
            blocks.append(get_down_block(
                "DownBlock2D", num_layers=1, in_channels=previous, out_channels=width, temb_channels=temb,
                add_downsample=i < len(config.widths) - 1, resnet_eps=1e-5, resnet_act_fn="silu",
                resnet_groups=config.groups, downsample_padding=1, resnet_time_scale_shift="scale_shift",
                attention_head_dim=1,  # unused by DownBlock2D; silences a diffusers warning
            ))
            previous = width
        self.down_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(config.groups, previous)
        self.head = nn.Linear(previous, config.n_classes)

    def features(self, y_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The last feature map (before pooling): the Grad-CAM target layer's output."""
        emb = self.time_embedding(self.time_proj(timesteps).to(y_t.dtype))
        h = self.conv_in(y_t)
        for block in self.down_blocks:
            h, _ = block(hidden_states=h, temb=emb)
        return torch.nn.functional.silu(self.norm_out(h))

    def forward(self, y_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(y_t, timesteps).mean(dim=(2, 3)))


class FixedTimestep(nn.Module):
    """``classifier(y, t)`` as a one-input model (for Grad-CAM tools that call ``model(x)``)."""

    def __init__(self, classifier: NoisyClassifier, timestep: int = 0):
        super().__init__()
        self.classifier = classifier
        self.timestep = int(timestep)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        t = torch.full((y.shape[0],), self.timestep, dtype=torch.long, device=y.device)
        return self.classifier(y, t)
