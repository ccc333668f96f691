"""Crops as the model was trained on them: at the model's voxel size, and masked to the cell if it was.

A cell is cut from the image at the *image's* voxel grid, covering the same physical extent (µm) as the
model's crop; masks, maps and scores stay on that grid (where the user looks). Only the pixels fed to the
model are resampled to the model's crop shape, and the model's map is brought back to the image grid by
the usual upsampling.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Voxel sizes closer than this (relative) count as equal: no resampling.
TOLERANCE = 0.01


def image_crop_shape(model_crop: Sequence[int], model_voxel: Sequence[float] | None,
                     image_voxel: Sequence[float] | None, spatial_dims: int = 3) -> tuple[int, int, int]:
    """The crop (z, y, x) in image voxels that covers the model's crop in µm (the model's crop if either
    voxel size is unknown). A 2D model keeps its z (one plane, or the planes asked for)."""
    crop = [int(s) for s in model_crop]
    if model_voxel is None or image_voxel is None:
        return tuple(crop)
    axes = range(1, 3) if spatial_dims == 2 else range(3)
    for a in axes:
        crop[a] = max(1, int(round(crop[a] * float(model_voxel[a]) / float(image_voxel[a]))))
    return tuple(crop)


def needs_resampling(model_voxel, image_voxel, spatial_dims: int = 3) -> bool:
    if model_voxel is None or image_voxel is None:
        return False
    axes = range(1, 3) if spatial_dims == 2 else range(3)
    return any(abs(float(model_voxel[a]) / float(image_voxel[a]) - 1.0) > TOLERANCE for a in axes)


def resample_crops(batch: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resampling of crops (B, C, z, y, x) to ``shape`` (z, y, x); unchanged when already that shape."""
    shape = tuple(int(s) for s in shape)
    if tuple(batch.shape[2:]) == shape:
        return batch
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(batch), dtype=torch.float32)
    if shape[0] == batch.shape[2]:  # z unchanged (2D models, or equal z spacing): resample y, x per plane
        b, c, z = t.shape[:3]
        planes = t.permute(0, 2, 1, 3, 4).reshape(b * z, c, *t.shape[3:])
        out = F.interpolate(planes, size=shape[1:], mode="bilinear", align_corners=False, antialias=True)
        return out.reshape(b, z, c, *shape[1:]).permute(0, 2, 1, 3, 4).contiguous().numpy()
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=False).numpy()


def mask_outside_cell(batch: np.ndarray, cell_masks: np.ndarray, padding_value: float) -> np.ndarray:
    """Set every voxel outside each crop's own cell to ``padding_value`` (crops (B, C, z, y, x), masks (B, z, y, x))."""
    return np.where(cell_masks[:, None], batch, np.float32(padding_value)).astype(np.float32, copy=False)
