"""Grad-CAMO as a training regulariser: a differentiable penalty that rewards evidence on the cell.

For a batch of crops with true classes ``y`` and central-cell masks ``M`` (crop grid), at a chosen layer
with activations ``A`` (B, C, z', y', x') and the true-class gradients ``g = ∂logit_y/∂A`` (kept in the
autograd graph, ``create_graph=True``):

* the penalty's map is the magnitude of every local first-order contribution, ``Σ_c |g_c · A_c|`` per
  voxel (:func:`contribution_map`), upsampled to the crop grid;
* its share inside the cell, ``Σ map·M / Σ map`` (:func:`share_inside`), is the crop's score;
* penalty = mean over the batch of (1 − score), over every crop whose mask is non-empty.

Why not the audit's Grad-CAM map (``ReLU(Σ_c mean(g_c) A_c)``)? It was the first objective, and it could
be gamed (docs/regularizer.md): Grad-CAM averages each channel's gradient over the crop, so a channel that
reads the background with gradients of both signs gets a weight near zero and vanishes from the map, and the
ReLU hides evidence *against* the class. Over 8 seeds the Grad-CAM penalty raised the audit's Grad-CAMO on
some and made the model *more* dependent on the background on others (seed 3 once collapsed to 0.000).
Local contributions cannot cancel between voxels or channels, and background evidence of either sign
costs. The scores *reported* per crop stay the audit's Grad-CAM ones (:func:`gradcam_of`).

The training loss is ``cross_entropy + λ · penalty``; λ = 0 skips the penalty altogether, so training is
exactly the plain loop. In training mode batch norm couples the crops of a batch.
"""

from __future__ import annotations

EPS = 1e-8


class LayerCapture:
    """Keep the latest output of one named layer (kept in the graph, not detached)."""

    def __init__(self, model, layer_name: str):
        from napari_gradcamo.audit.cam import get_module

        self.output = None
        self._handle = get_module(model, layer_name).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.output = output

    def remove(self) -> None:
        self._handle.remove()
        self.output = None

    def __enter__(self) -> "LayerCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def true_class_gradients(logits, activations, target, create_graph: bool = True):
    """∂logit_target[i]/∂A for each crop (same shape as ``activations``), in the graph if ``create_graph``."""
    import torch

    if activations is None or not activations.requires_grad:
        raise ValueError("The target layer's activations are not part of the graph (was the forward pass run "
                         "under torch.no_grad(), or are the weights frozen?).")
    score = logits.gather(1, target.reshape(-1, 1).long()).sum()
    (grads,) = torch.autograd.grad(score, activations, create_graph=create_graph)
    return grads


def gradcam_of(grads, activations):
    """The audit's Grad-CAM map ReLU(Σ_c mean_zyx(g_c) · A_c): (B, z', y', x') ≥ 0."""
    import torch

    spatial = tuple(range(2, activations.ndim))
    weights = grads.float().mean(dim=spatial, keepdim=True)
    return torch.relu((weights * activations.float()).sum(dim=1))


def contribution_map(grads, activations):
    """Σ_c |g_c · A_c| per voxel (B, z', y', x'): how much each place moves the logit, of either sign."""
    return (grads.float() * activations.float()).abs().sum(dim=1)


def share_inside(cam, cell_mask):
    """Share of each map inside the cell on the crop grid: returns (scores (B,), valid (B,) bool).

    ``cam`` (B, z', y', x') is upsampled trilinearly (bilinearly in 2D) to ``cell_mask``'s grid.
    """
    import torch.nn.functional as F

    mask = cell_mask.to(dtype=cam.dtype)
    size = tuple(mask.shape[1:])
    mode = "trilinear" if len(size) == 3 else "bilinear"
    if tuple(cam.shape[1:]) != size:
        cam = F.interpolate(cam[:, None], size=size, mode=mode, align_corners=False)[:, 0].clamp_min(0.0)
    dims = tuple(range(1, cam.ndim))
    total = cam.sum(dim=dims)
    on_cell = (cam * mask).sum(dim=dims)
    valid = (total > EPS) & (mask.sum(dim=dims) > 0)
    return on_cell / total.clamp_min(EPS), valid


def gradcamo_penalty(logits, activations, target, cell_mask, create_graph: bool = True):
    """Return (penalty, scores): mean (1 − share of the local contributions inside the cell) over every
    crop with a non-empty mask, and each crop's audit Grad-CAMO (NaN where its Grad-CAM is zero or the mask
    empty)."""
    import torch

    grads = true_class_gradients(logits, activations, target, create_graph=create_graph)
    shares, _ = share_inside(contribution_map(grads, activations), cell_mask)
    counted = cell_mask.flatten(1).any(dim=1)
    if bool(counted.any()):
        penalty = (1.0 - shares[counted]).mean()
    else:
        penalty = logits.sum() * 0.0
    with torch.no_grad():
        scores, valid = share_inside(gradcam_of(grads.detach(), activations.detach()), cell_mask)
    reported = torch.where(valid, scores, torch.full_like(scores, float("nan")))
    return penalty, reported
