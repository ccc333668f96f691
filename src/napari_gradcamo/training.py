"""Train a crop classifier: crops from labelled fields, fixed normalisation, seeded training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .crops import cell_table, extract_crop
from .images import Image
from .progress import CancelToken, ProgressCallback, check, report


@dataclass
class CropSet:
    """Crops (N, C, z, y, x), integer classes (N,) and one group id per crop (e.g. the well)."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> "CropSet":
        return CropSet(self.x[index], self.y[index], self.groups[index])


@dataclass
class History:
    """Per-epoch training loss/accuracy and, when given, validation accuracy."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


def crops_from_images(
    items: Iterable[tuple[Image, np.ndarray, int, str]], crop_shape: Sequence[int], max_padded_fraction: float = 0.5
) -> CropSet:
    """Crop every cell of each (image, labels, class, group); skip cells mostly outside the image."""
    xs, ys, groups = [], [], []
    for image, labels, cls, group in items:
        for cell in cell_table(labels):
            crop = extract_crop(image, labels, cell, crop_shape)
            if crop.padded_fraction > max_padded_fraction:
                continue
            xs.append(crop.image)
            ys.append(cls)
            groups.append(group)
    if not xs:
        raise ValueError("No cells to train on: every image was empty or its cells lay outside their crops.")
    return CropSet(np.stack(xs).astype(np.float32), np.asarray(ys, np.int64), np.asarray(groups))


def crops_from_fields(fields, crop_shape: Sequence[int]) -> CropSet:
    """Crops from synthetic fields (see :mod:`.synthetic`), grouped by well."""
    return crops_from_images(((f.image, f.labels, f.treatment, f.image.metadata["well"]) for f in fields), crop_shape)


def fit_normalization(x: np.ndarray) -> dict:
    """Per-channel mean and standard deviation of training crops, stored in the checkpoint."""
    axes = (0, 2, 3, 4)
    return {"method": "fixed", "mean": x.mean(axis=axes).tolist(), "std": x.std(axis=axes).tolist()}


def augment(batch: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray:
    """Biology-preserving augmentation: xy flips, 90° xy rotations (square crops), per-channel gain."""
    out = np.empty_like(batch)
    square = batch.shape[-1] == batch.shape[-2]
    for i, crop in enumerate(batch):
        if rng.random() < 0.5:
            crop = crop[..., ::-1]
        if rng.random() < 0.5:
            crop = crop[..., ::-1, :]
        if square:
            crop = np.rot90(crop, k=int(rng.integers(4)), axes=(-2, -1))
        gain = 1.0 + jitter * rng.standard_normal((crop.shape[0], 1, 1, 1))
        out[i] = crop * gain.astype(np.float32)
    return out


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 32, device="cpu") -> float:
    """Share of crops (already normalised) whose predicted class is ``y``."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(torch.as_tensor(x[start : start + batch_size], device=device))
            correct += int((logits.argmax(1).cpu().numpy() == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def train_classifier(
    model,
    train: CropSet,
    normalization: dict,
    *,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    validation: CropSet | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> History:
    """Train ``model`` in place with AdamW and a cosine learning-rate schedule; returns the history."""
    import torch
    import torch.nn.functional as F

    from .models import normalize_crops

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    x = normalize_crops(train.x, normalization)
    x_val = normalize_crops(validation.x, normalization) if validation is not None else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * int(np.ceil(len(train) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    history = History()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        losses, correct = [], 0
        for start in range(0, len(order), batch_size):
            check(cancel, "training")
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue  # batch norm needs two samples
            batch = torch.as_tensor(augment(x[idx], rng), device=device)
            target = torch.as_tensor(train.y[idx], device=device)
            logits = model(batch)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == target).sum())
        history.loss.append(float(np.mean(losses)))
        history.accuracy.append(correct / len(order))
        if x_val is not None:
            history.val_accuracy.append(accuracy(model, x_val, validation.y, device=device))
        report(progress, epoch + 1, epochs, f"loss {history.loss[-1]:.3f}")
    model.eval()
    return history
