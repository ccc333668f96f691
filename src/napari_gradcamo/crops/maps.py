"""A cell's raw Grad-CAM map placed on its crop: the record the audit returns and a saved audit reads back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def upsample(raw: np.ndarray, crop_shape: Sequence[int]) -> np.ndarray:
    """Trilinear upsampling of raw maps (B, z', y', x') to the crop grid (B, z, y, x), kept ≥ 0."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(raw, dtype=torch.float32)[:, None]
    out = F.interpolate(t, size=tuple(int(s) for s in crop_shape), mode="trilinear", align_corners=False)
    return out[:, 0].clamp_min_(0.0).numpy()


@dataclass
class CellCam:
    """A cell's raw Grad-CAM map and where its crop sits in the image (voxel index of its first voxel)."""

    label: int
    raw: np.ndarray  # (z', y', x') at the target layer's resolution, ≥ 0
    origin: tuple[int, int, int]
    crop_shape: tuple[int, int, int]

    def on_crop_grid(self) -> np.ndarray:
        """The map upsampled trilinearly to the crop grid (z, y, x)."""
        return upsample(self.raw[None], self.crop_shape)[0]
