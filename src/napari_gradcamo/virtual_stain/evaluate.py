"""The seed paper's metrics on predicted stains, and where class labels put their signal.

* image metrics per image (model units, data range 2): PCC (mean over stains), SSIM (torchmetrics),
  MSE and MAE;
* hand-crafted per-cell features (:func:`cell_features`: per stain mean, spread, integrated intensity,
  nucleus and cytoplasm means, edge texture, bright-area fraction; DNA-based nucleus area) — a small
  CellProfiler stand-in; feature correlation with the ground truth (per feature, across cells, mean);
* profiles = per-field medians of the per-cell features, z-scored within each set; nearest-neighbour
  target matches (the nearest other profile, by cosine distance, has the same class), top-5 matches, and
  MTdist (mean cosine distance between profiles of the same class);
* a Fréchet distance between predicted and true per-cell feature distributions in that feature space
  (Inception weights cannot be downloaded here, so no FID);
* :func:`label_signal` — share of the class-conditional difference (with vs without label, same noise)
  inside cells vs in the background; :func:`guidance_gradcamo` — Grad-CAMO of the guidance classifier.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import linalg
from scipy import ndimage as ndi

FEATURES_PER_STAIN = ("mean", "sd", "integrated", "nucleus_mean", "cytoplasm_mean", "edges", "bright_fraction")


def image_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean PCC, SSIM, MSE, MAE over images ``(N, C, H, W)`` in model units (range [-1, 1] → data range 2)."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 4:
        raise ValueError(f"pred and truth must both be (N, C, H, W); got {pred.shape} and {truth.shape}.")
    p = pred.reshape(pred.shape[0], pred.shape[1], -1)
    t = truth.reshape(p.shape)
    pc, tc = p - p.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
    denom = np.sqrt((pc**2).sum(-1) * (tc**2).sum(-1))
    pcc = np.where(denom > 0, (pc * tc).sum(-1) / np.where(denom > 0, denom, 1), np.nan)
    s = ssim(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(truth, dtype=torch.float32),
             data_range=2.0, reduction="elementwise_mean")
    return {"pcc": float(np.nanmean(pcc)), "ssim": float(s), "mse": float(((p - t) ** 2).mean()),
            "mae": float(np.abs(p - t).mean())}


def cell_features(stains: np.ndarray, cell_mask: np.ndarray, nucleus_mask: np.ndarray | None = None) -> np.ndarray:
    """Features of one cell: ``stains (C, H, W)``, masks ``(H, W)``; the nucleus is found from stain 0 (DNA).

    Per stain the :data:`FEATURES_PER_STAIN`, in that order, then the nucleus area: ``C·7 + 1`` values."""
    cell = cell_mask.astype(bool)
    dna = stains[0]
    if nucleus_mask is None:
        inside = dna[cell]
        thr = inside.mean() + 0.5 * inside.std() if inside.size else 0.0
        nucleus = cell & (dna > thr)
    else:
        nucleus = nucleus_mask.astype(bool) & cell
    cyto = cell & ~nucleus
    values = []
    for channel in stains:
        v = channel[cell]
        edges = np.hypot(ndi.sobel(channel, 0), ndi.sobel(channel, 1))[cell]
        values += [v.mean(), v.std(), v.sum() / 100.0,
                   channel[nucleus].mean() if nucleus.any() else v.mean(),
                   channel[cyto].mean() if cyto.any() else v.mean(),
                   edges.mean(), float((v > v.mean() + v.std()).mean())]
    values.append(float(nucleus.sum()))
    return np.asarray(values, np.float64)


def crop_features(stains: np.ndarray, cell_masks: np.ndarray) -> np.ndarray:
    """Per-cell features ``(N, F)`` for crops ``(N, C, H, W)`` with their central cells' masks."""
    return np.stack([cell_features(s, m) for s, m in zip(stains, cell_masks)])


def feature_correlation(pred_features: np.ndarray, true_features: np.ndarray) -> float:
    """Mean over features of the Pearson correlation (across cells) of predicted with true values."""
    r = []
    for a, b in zip(pred_features.T, true_features.T):
        if a.std() > 0 and b.std() > 0:
            r.append(np.corrcoef(a, b)[0, 1])
    return float(np.mean(r)) if r else float("nan")


def profiles(features: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median per group (field), z-scored per feature within the set; returns (profiles, group ids)."""
    ids = np.unique(groups)
    prof = np.stack([np.median(features[groups == g], axis=0) for g in ids])
    sd = prof.std(0)
    return (prof - prof.mean(0)) / np.where(sd > 0, sd, 1.0), ids


def _cosine_distances(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / np.where(norm > 0, norm, 1.0)
    return 1.0 - u @ u.T


def matching(profiles_: np.ndarray, classes: np.ndarray, top: int = 5) -> dict[str, float]:
    """NN matches (count), top-``top`` matches (count) and MTdist (mean same-class cosine distance)."""
    d = _cosine_distances(profiles_)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1)
    same = classes[order] == classes[:, None]
    pairs = (classes[:, None] == classes[None, :]) & ~np.eye(len(classes), dtype=bool)
    return {"nn_matches": int(same[:, 0].sum()), f"top{top}_matches": int(same[:, :top].any(1).sum()),
            "mtdist": float(d[pairs].mean()) if pairs.any() else float("nan"), "n_profiles": int(len(classes))}


def frechet_distance(a: np.ndarray, b: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Fréchet distance of Gaussians fitted to ``a`` and ``b`` (rows = samples), in the z-scored space of ``reference``."""
    ref = b if reference is None else reference
    mean, sd = ref.mean(0), ref.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    a, b = (a - mean) / sd, (b - mean) / sd
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2.0 * covmean))


def evaluate_predictions(pred: np.ndarray, truth: np.ndarray, cell_masks: np.ndarray, classes: np.ndarray,
                         fields: np.ndarray) -> dict[str, float]:
    """Every metric of the table for crops ``(N, C, H, W)`` (model units) with central-cell masks."""
    out = image_metrics(pred, truth)
    fp, ft = crop_features(pred, cell_masks), crop_features(truth, cell_masks)
    out["feature_corr"] = feature_correlation(fp, ft)
    out["frechet_features"] = frechet_distance(fp, ft)
    field_class = {int(f): int(c) for f, c in zip(fields, classes)}
    prof, ids = profiles(fp, fields)
    out.update(matching(prof, np.array([field_class[int(i)] for i in ids])))
    return out


def label_signal(with_label: np.ndarray, without_label: np.ndarray, cell_masks: np.ndarray) -> dict[str, float]:
    """Where the class label changed the image: share of Σ|with - without| inside cells (all stains).

    ``cell_masks (N, H, W)`` mark every cell (not only the central one); ``background_pixels`` is the
    share of pixels outside cells, the share a label that changes every pixel alike would put there.
    """
    diff = np.abs(np.asarray(with_label, np.float64) - np.asarray(without_label, np.float64)).sum(1)
    cells = np.asarray(cell_masks, bool)
    total = diff.sum()
    inside = float(diff[cells].sum() / total) if total > 0 else float("nan")
    return {"label_share_in_cells": inside, "label_share_background": 1.0 - inside,
            "background_pixels": float(1.0 - cells.mean()), "mean_abs_label_effect": float(diff.mean())}


def guidance_gradcamo(classifier, stains: np.ndarray, cell_masks: np.ndarray, classes: Sequence[int],
                      timestep: int = 0, other_masks: np.ndarray | None = None) -> list[dict]:
    """Grad-CAMO of the guidance classifier on stains ``(N, C, H, W)`` for the given classes.

    Raw Grad-CAM maps from the project's :class:`~napari_gradcamo.audit.cam.CamEngine` (pytorch-grad-cam's
    ``get_cam_image``, non-negative) at the last residual block, upsampled bilinearly to the crop and scored
    with :func:`~napari_gradcamo.audit.scoring.score_cam`.
    """
    import torch
    import torch.nn.functional as F

    from napari_gradcamo.audit.cam import CamEngine
    from napari_gradcamo.audit.scoring import score_cam
    from napari_gradcamo.virtual_stain.model import FixedTimestep

    wrapped = FixedTimestep(classifier, timestep)
    layer = f"classifier.down_blocks.{len(classifier.down_blocks) - 1}.resnets.0"
    with CamEngine(wrapped, layer, "gradcam", device="cpu") as engine:
        # the engine takes crops (N, C, z, y, x) and treats a 2D model's crop as z planes: one plane here
        probs, _, raw = engine.compute(np.asarray(stains, np.float32)[:, :, None], list(classes))
    cams = F.interpolate(torch.as_tensor(raw[:, 0])[:, None], size=stains.shape[2:], mode="bilinear",
                         align_corners=False)[:, 0].clamp_min(0).numpy()
    rows = []
    for i, (cam, mask) in enumerate(zip(cams, cell_masks)):
        other = None if other_masks is None else other_masks[i]
        row = score_cam(cam, mask, other).columns()
        row["prob_class"] = float(probs[i, int(classes[i])])
        rows.append(row)
    return rows
