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
