"""Zero-argument factories of 3D single-cell classifiers (5 stains in) whose convolutions sit three modules deep."""

from __future__ import annotations

import torch.nn as nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU())

    def forward(self, x):
        return self.conv(x)


class CellNet(nn.Module):
    """encoder.stages.N.conv.0 is the deepest convolution: three modules below the top."""

    def __init__(self, outputs: int):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.stages = nn.Sequential(Block(5, 8), nn.MaxPool3d((1, 2, 2)), Block(8, 16), nn.MaxPool3d(2), Block(16, 32))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, outputs))

    def forward(self, x):
        return self.classifier(self.encoder.stages(x))


def build_3d():
    """Two classes, softmax."""
    return CellNet(2)


def build_binary():
    """One logit: P(treated) = sigmoid(z)."""
    return CellNet(1)
