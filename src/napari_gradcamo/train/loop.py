"""The epoch loop of a crop classifier, shared by two entry points:

* :func:`train_classifier` — the plain in-memory loop (AdamW + one-cycle LR), used by the planted-confound
  experiment and the bundled demo models;
* :func:`napari_gradcamo.train.fit.fit` — what ``gradcamo train`` runs (lazy crops, class balance, early
  stopping, resumable state, checkpoints with full metadata, the optional regularisers of :mod:`.regularizer`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from napari_gradcamo.crops.datasets import MASK_CELL, CropSet
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report
from napari_gradcamo.train.data import augment, augment_with_masks


@dataclass
class History:
    """Per-epoch training loss/accuracy and, when given, validation accuracy and loss; with the
    outside-gradient penalty its mean (``penalty``) and the median share of squared input gradient outside
    the cell (``outside_gradient_share``) over the epoch's crops (NaN without the penalty)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    outside_gradient_share: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def model_input(data: CropSet, idx: np.ndarray, normalization: dict, crop_mode: str = "context",
                padding_value: float = 0.0) -> np.ndarray:
    """Crops ``idx`` as the model sees them: normalised and, for ``crop_mode="masked"`` (DeepProfiler's
    ``mask_objects``), everything outside the crop's own cell set to ``padding_value`` — as the audit does."""
    from napari_gradcamo.crops.resample import mask_outside_cell
    from napari_gradcamo.models.checkpoint import normalize_crops

    crops = normalize_crops(np.asarray(data.x[idx]), normalization)
    if crop_mode != "masked":
        return crops
    if data.masks is None:
        raise ValueError("Masked crops need each crop's cell mask (CropSet.masks).")
    return mask_outside_cell(crops, np.asarray(data.masks[idx]) == MASK_CELL, padding_value)


def evaluate(model, data: CropSet, rows: Sequence[int], normalization: dict, *, batch_size: int = 32, device="cpu",
             class_weights=None, amp: bool = False, head: str = "softmax", crop_mode: str = "context",
             padding_value: float = 0.0) -> dict:
    """Loss (the head's: cross-entropy for softmax) and accuracy of ``model`` on ``data.x[rows]``."""
    import torch

    from napari_gradcamo.models import heads
    from napari_gradcamo.models.layers import crops_as_input, model_spatial_dims

    dims = model_spatial_dims(model)

    rows = np.asarray(rows)
    model.eval()
    correct, loss_sum, weight_sum = 0, 0.0, 0.0
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            x = torch.as_tensor(model_input(data, idx, normalization, crop_mode, padding_value), device=device)
            y = torch.as_tensor(data.y[idx], device=device)
            with _autocast(device, amp):
                logits = model(crops_as_input(x, dims))
            logits = logits.float()
            correct += int((heads.predicted(head, logits) == y).sum())
            w = torch.ones_like(y, dtype=torch.float32) if weight is None else weight[y]
            loss_sum += float(heads.loss(head, logits, y, reduction="none").mul(w).sum())
            weight_sum += float(w.sum())
    return {"accuracy": correct / max(1, len(rows)), "loss": loss_sum / max(weight_sum, 1e-12)}


# ---------------------------------------------------------------------------------------------- the epoch loop


def _device_type(device) -> str:
    return getattr(device, "type", str(device).split(":")[0])


def _autocast(device, enabled: bool):
    """bfloat16 autocast on CUDA when ``enabled`` (float16 where bf16 is missing); a no-op elsewhere."""
    import contextlib

    import torch

    if not enabled or _device_type(device) != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@dataclass
class LoopState:
    model: object
    optimizer: object
    schedule: object
    rng: np.random.Generator
    scaler: object = None


def run_epoch(state: LoopState, data: CropSet, order: np.ndarray, normalization: dict, *, batch_size: int,
               device, jitter: float = 0.1, class_weights=None, outside_gradient_weight: float = 0.0,
               context_randomisation: float = 0.0, amp: bool = False, progress=None, cancel=None,
               step_offset: int = 0, total_steps: int = 0, epoch_label: str = "", head: str = "softmax",
               crop_mode: str = "context", padding_value: float = 0.0) -> dict:
    """One pass over ``order``; returns the epoch's mean loss, accuracy and penalty and the median share of
    squared input gradient outside the cell (:mod:`.regularizer`; NaN without the penalty).

    ``outside_gradient_weight`` λ > 0 adds λ · the outside-gradient penalty; ``context_randomisation`` p > 0
    gives each crop, with probability p, the context of a random crop of its batch (after augmentation).
    Both need ``data.masks``; with both at 0 the loop is exactly the plain one.
    """
    import torch

    from napari_gradcamo.models import heads
    from napari_gradcamo.models.checkpoint import normalize_crops
    from napari_gradcamo.models.layers import crops_as_input, model_spatial_dims
    from napari_gradcamo.train.regularizer import input_gradients, outside_gradient_penalty, randomise_context

    model, optimizer, schedule, rng = state.model, state.optimizer, state.schedule, state.rng
    dims = model_spatial_dims(model)
    use_penalty = outside_gradient_weight > 0
    need_masks = use_penalty or context_randomisation > 0 or crop_mode == "masked"
    if need_masks and data.masks is None:
        raise ValueError("Masked crops, the outside-gradient penalty and context randomisation need each crop's "
                         "cell mask (CropSet.masks).")
    if crop_mode == "masked":
        from napari_gradcamo.crops.resample import mask_outside_cell
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    model.train()
    losses, penalties, shares, correct, seen = [], [], [], 0, 0
    step = step_offset
    for start in range(0, len(order), batch_size):
        check(cancel, "training")
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue  # batch norm needs two samples
        crops = normalize_crops(np.asarray(data.x[idx]), normalization)
        if need_masks:
            crops, masks = augment_with_masks(crops, np.asarray(data.masks[idx]), rng, jitter)
        else:
            crops = augment(crops, rng, jitter)
        if context_randomisation > 0:
            crops = randomise_context(crops, masks == MASK_CELL, rng, context_randomisation)
        if crop_mode == "masked":  # after the intensity jitter: the outside is exactly the padding value
            crops = mask_outside_cell(crops, masks == MASK_CELL, padding_value)
        batch = torch.as_tensor(crops, device=device)
        if use_penalty:
            batch.requires_grad_(True)
        target = torch.as_tensor(data.y[idx], device=device)
        with _autocast(device, amp):
            logits = model(crops_as_input(batch, dims))
        loss = heads.loss(head, logits, target, weight)
        if use_penalty:
            cell = torch.as_tensor(masks == MASK_CELL, device=device)
            penalty, share = outside_gradient_penalty(input_gradients(head, logits, batch), cell)
            loss = loss + outside_gradient_weight * penalty
            penalties.append(float(penalty.detach()))
            shares.extend(share.cpu().numpy().tolist())
        optimizer.zero_grad()
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        correct += int((heads.predicted(head, logits) == target).sum())
        seen += len(idx)
        step += 1
        if progress is not None:
            report(progress, step, total_steps,
                   f"{epoch_label}loss {np.mean(losses):.3f} acc {correct / max(seen, 1):.2f}")
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "accuracy": correct / max(1, len(order)),
        "penalty": float(np.mean(penalties)) if penalties else float("nan"),
        "outside_gradient_share": float(np.nanmedian(shares)) if np.isfinite(shares).any() else float("nan"),
        "steps": step - step_offset,
    }


def count_steps(n: int, batch_size: int) -> int:
    return int(np.ceil(n / batch_size))


def make_optimizer(model, lr: float, weight_decay: float, total_steps: int):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1))
    return optimizer, schedule


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
    outside_gradient_weight: float = 0.0,
    context_randomisation: float = 0.0,
    jitter: float = 0.1,
) -> History:
    """Train ``model`` in place with AdamW and a one-cycle (cosine) learning-rate schedule; returns the history.

    ``outside_gradient_weight`` λ > 0 adds λ · the summed squared input gradient of Σ_k log p_k outside each
    crop's cell; ``context_randomisation`` p > 0 gives each training crop, with probability p, the context of
    a random crop of its batch (see :mod:`.regularizer`; both need ``train.masks``). With both at 0 this is
    exactly the plain loop.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    optimizer, schedule = make_optimizer(model, lr, weight_decay, epochs * count_steps(len(train), batch_size))
    state = LoopState(model, optimizer, schedule, rng)
    history = History()
    rows = np.arange(len(train))
    for epoch in range(epochs):
        order = rows[rng.permutation(len(train))]
        stats = run_epoch(state, train, order, normalization, batch_size=batch_size, device=device, jitter=jitter,
                           outside_gradient_weight=outside_gradient_weight,
                           context_randomisation=context_randomisation, cancel=cancel)
        history.loss.append(stats["loss"])
        history.accuracy.append(stats["accuracy"])
        history.penalty.append(stats["penalty"])
        history.outside_gradient_share.append(stats["outside_gradient_share"])
        if validation is not None:
            val = evaluate(model, validation, np.arange(len(validation)), normalization, device=device)
            history.val_accuracy.append(val["accuracy"])
            history.val_loss.append(val["loss"])
        report(progress, epoch + 1, epochs, f"loss {history.loss[-1]:.3f}")
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------- splits


