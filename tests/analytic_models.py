"""Models whose Grad-CAM is known in closed form, used to check the engine exactly."""

import torch
from torch import nn


class ChannelMeanClassifier(nn.Module):
    """logit_k = w_k · mean(x₀): the feature map is channel 0 itself, so for w_k > 0 every gradient CAM
    method gives cam ∝ x₀ and Grad-CAMO = Σ x₀·M / Σ x₀ exactly; for w_k < 0 the CAM is zero."""

    def __init__(self, in_channels: int, num_classes: int, weights=(2.0, -1.0)):
        super().__init__()
        self.features = nn.Conv3d(in_channels, 1, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(1, num_classes, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.head.weight[:, 0] = torch.tensor(weights[:num_classes], dtype=torch.float32)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def channel_mean_classifier(in_channels: int, num_classes: int):
    """Factory in the 'package.module:function' form that checkpoints name."""
    return ChannelMeanClassifier(in_channels, num_classes)


class SpotReader2D(nn.Module):
    """A 2D model whose cue is known by construction: logit_treated = 20·(max over a region of x₀ − 0.5),
    logit_control = 0, so 'treated' iff a bright spot (channel 0) lies in the region. ``where="cell"``: the
    region is the cell's stain (channel 1, clamped to 0..1); ``"medium"``: everything outside it."""

    def __init__(self, where: str = "cell"):
        super().__init__()
        self.where = where
        self.features = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
        self.pool = nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        stain = x[:, 1:2].clamp(0, 1)
        region = stain if self.where == "cell" else 1 - stain
        m = self.pool(self.features(x) * region).flatten(1)
        return torch.cat([torch.zeros_like(m), 20 * (m - 0.5)], dim=1)


def spot_reader_2d(where: str = "cell"):
    """Factory of :class:`SpotReader2D` ('package.module:function' form)."""
    return SpotReader2D(where)
