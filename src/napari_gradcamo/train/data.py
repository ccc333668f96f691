"""What training needs of a crop set besides the model: well-level splits, normalisation, class balance,
augmentation."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def fit_normalization(x: np.ndarray) -> dict:
    """Per-channel mean and standard deviation of training crops, stored in the checkpoint."""
    axes = (0, 2, 3, 4)
    return _checked({"method": "fixed", "mean": x.mean(axis=axes).tolist(), "std": x.std(axis=axes).tolist()})


def _checked(normalization: dict) -> dict:
    """Refuse a channel that is constant over the training crops: its std is 0 and a checkpoint cannot divide
    by it (it was clamped to 1e-6 once, which made every crop of another image look extreme)."""
    flat = [i for i, (m, s) in enumerate(zip(normalization["mean"], normalization["std"])) if not s > 1e-7 * max(1.0, abs(m))]
    if flat:
        raise ValueError(f"Channel(s) {flat} are constant in the training crops (standard deviation 0): they carry no "
                         "information and cannot be normalised. Drop them from the images or the channel list, or "
                         "check that the right files were given.")
    return normalization


def fit_normalization_rows(x: np.ndarray, rows: Sequence[int], chunk: int = 256) -> dict:
    """:func:`fit_normalization` over ``x[rows]`` read in chunks (``x`` may be a memory map), float64 sums."""
    rows = np.sort(np.asarray(rows))
    if len(rows) == 0:
        raise ValueError("No training crops to fit the normalisation on.")
    n_channels = x.shape[1]
    total, total_sq, count = np.zeros(n_channels), np.zeros(n_channels), 0
    for start in range(0, len(rows), chunk):
        block = np.asarray(x[rows[start : start + chunk]], dtype=np.float64)
        total += block.sum(axis=(0, 2, 3, 4))
        total_sq += (block**2).sum(axis=(0, 2, 3, 4))
        count += block.shape[0] * int(np.prod(block.shape[2:]))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return _checked({"method": "fixed", "mean": mean.tolist(), "std": std.tolist()})


def _augment(batch: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator, jitter: float):
    out = np.empty_like(batch)
    out_masks = None if masks is None else np.empty_like(masks)
    square = batch.shape[-1] == batch.shape[-2]
    for i, crop in enumerate(batch):
        mask = None if masks is None else masks[i]
        if rng.random() < 0.5:
            crop = crop[..., ::-1]
            mask = None if mask is None else mask[..., ::-1]
        if rng.random() < 0.5:
            crop = crop[..., ::-1, :]
            mask = None if mask is None else mask[..., ::-1, :]
        if square:
            k = int(rng.integers(4))
            crop = np.rot90(crop, k=k, axes=(-2, -1))
            mask = None if mask is None else np.rot90(mask, k=k, axes=(-2, -1))
        gain = 1.0 + jitter * rng.standard_normal((crop.shape[0], 1, 1, 1))
        out[i] = crop * gain.astype(np.float32)
        if out_masks is not None:
            out_masks[i] = mask
    return out, out_masks


def augment(batch: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray:
    """Biology-preserving augmentation: xy flips, 90° xy rotations (square crops), per-channel gain."""
    return _augment(batch, None, rng, jitter)[0]


def augment_with_masks(batch: np.ndarray, masks: np.ndarray, rng: np.random.Generator, jitter: float = 0.1):
    """:func:`augment` applied to crops and the same flips/rotations to their masks (same random draws)."""
    return _augment(batch, masks, rng, jitter)


def class_weights_for(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency class weights, mean 1 over the present classes (absent classes weigh 0)."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    present = counts > 0
    return weights / weights[present].mean() * 1.0 if present.any() else weights


def epoch_order(y: np.ndarray, rows: np.ndarray, rng: np.random.Generator, balance: str | None) -> np.ndarray:
    """The crops (indices into ``rows``' data) of one epoch: a permutation, or a class-balanced draw."""
    if balance != "sampler":
        return rows[rng.permutation(len(rows))]
    labels = y[rows]
    classes, counts = np.unique(labels, return_counts=True)
    p = 1.0 / counts[np.searchsorted(classes, labels)]
    return rows[rng.choice(len(rows), size=len(rows), replace=True, p=p / p.sum())]


def split_by_group(groups: Sequence, y: Sequence[int], val_fraction: float = 0.2, test_fraction: float = 0.0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Split crops by group (well): every group lands in exactly one of train / val / test.

    Stratified by each group's majority class, seeded: within each class the groups are shuffled and
    ``round(fraction × n_groups)`` go to val (then test), at least one each when the class has ≥ 3 groups
    (≥ 2 without a test split) and the fraction is > 0. Returns row indices per split.
    """
    groups = np.asarray(groups).astype(str)
    y = np.asarray(y)
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1.")
    unique = sorted(set(groups.tolist()))
    majority = {}
    for g in unique:
        values, counts = np.unique(y[groups == g], return_counts=True)
        majority[g] = int(values[np.argmax(counts)])
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for cls in sorted(set(majority.values())):
        members = [g for g in unique if majority[g] == cls]
        members = [members[i] for i in rng.permutation(len(members))]
        n = len(members)
        n_test = int(round(test_fraction * n))
        n_val = int(round(val_fraction * n))
        if test_fraction > 0 and n_test == 0 and n >= 3:
            n_test = 1
        if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
            n_val = 1
        n_val = min(n_val, max(0, n - n_test - 1))
        for i, g in enumerate(members):
            assignment[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    split = np.array([assignment[g] for g in groups])
    return {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}


# ---------------------------------------------------------------------------------------------- fit (gradcamo train)
