"""Train a crop classifier: crops, well-level splits, normalisation, and a seeded, resumable training loop.

Two entry points share one epoch loop (:func:`_run_epoch`):

* :func:`train_classifier` — the plain in-memory loop (AdamW + one-cycle LR), used by the planted-confound
  experiment and the bundled demo models; unchanged behaviour for the same arguments.
* :func:`fit` — what ``gradcamo train`` runs: crops read lazily (a memory-mapped cache), class balance,
  early stopping on validation loss, mixed precision on CUDA, resumable state, checkpoints with full
  metadata, and the optional Grad-CAMO regulariser (:mod:`.regularizer`).
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.crops.datasets import MASK_CELL, CropSet
from napari_gradcamo.io.atomic import write_with
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report


@dataclass
class History:
    """Per-epoch training loss/accuracy and, when given, validation accuracy (and loss, penalty, Grad-CAMO)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    train_gradcamo: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_normalization(x: np.ndarray) -> dict:
    """Per-channel mean and standard deviation of training crops, stored in the checkpoint."""
    axes = (0, 2, 3, 4)
    return {"method": "fixed", "mean": x.mean(axis=axes).tolist(), "std": x.std(axis=axes).tolist()}


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
    return {"method": "fixed", "mean": mean.tolist(), "std": std.tolist()}


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


def evaluate(model, data: CropSet, rows: Sequence[int], normalization: dict, *, batch_size: int = 32, device="cpu",
             class_weights=None, amp: bool = False, head: str = "softmax") -> dict:
    """Loss (the head's: cross-entropy for softmax) and accuracy of ``model`` on ``data.x[rows]``."""
    import torch

    from napari_gradcamo.audit.layers import crops_as_input, model_spatial_dims
    from napari_gradcamo.models import heads
    from napari_gradcamo.models.checkpoint import normalize_crops

    dims = model_spatial_dims(model)

    rows = np.asarray(rows)
    model.eval()
    correct, loss_sum, weight_sum = 0, 0.0, 0.0
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            x = torch.as_tensor(normalize_crops(np.asarray(data.x[idx]), normalization), device=device)
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


@dataclass
class _LoopState:
    model: object
    optimizer: object
    schedule: object
    rng: np.random.Generator
    scaler: object = None


def _run_epoch(state: _LoopState, data: CropSet, order: np.ndarray, normalization: dict, *, batch_size: int,
               device, jitter: float = 0.1, class_weights=None, gradcamo_weight: float = 0.0,
               target_layer: str | None = None, amp: bool = False, progress=None, cancel=None,
               step_offset: int = 0, total_steps: int = 0, epoch_label: str = "", head: str = "softmax") -> dict:
    """One pass over ``order``; returns mean loss, accuracy, penalty and train Grad-CAMO of the epoch."""
    import torch

    from napari_gradcamo.audit.layers import crops_as_input, model_spatial_dims
    from napari_gradcamo.models import heads
    from napari_gradcamo.models.checkpoint import normalize_crops

    model, optimizer, schedule, rng = state.model, state.optimizer, state.schedule, state.rng
    dims = model_spatial_dims(model)
    use_penalty = gradcamo_weight > 0
    if use_penalty:
        if data.masks is None:
            raise ValueError("The Grad-CAMO regulariser needs each crop's cell mask (CropSet.masks).")
        if not target_layer:
            raise ValueError("The Grad-CAMO regulariser needs a target layer.")
        from napari_gradcamo.train.regularizer import LayerCapture, gradcamo_penalty

        capture = LayerCapture(model, target_layer)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    model.train()
    losses, penalties, scores, correct, seen = [], [], [], 0, 0
    step = step_offset
    try:
        for start in range(0, len(order), batch_size):
            check(cancel, "training")
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue  # batch norm needs two samples
            crops = normalize_crops(np.asarray(data.x[idx]), normalization)
            if use_penalty:
                crops, masks = augment_with_masks(crops, np.asarray(data.masks[idx]), rng, jitter)
            else:
                crops = _augment(crops, None, rng, jitter)[0]
            batch = torch.as_tensor(crops, device=device)
            target = torch.as_tensor(data.y[idx], device=device)
            with _autocast(device, amp):
                logits = model(crops_as_input(batch, dims))
            loss = heads.loss(head, logits, target, weight)
            if use_penalty:
                cell = torch.as_tensor(masks == MASK_CELL, device=device)
                penalty, batch_scores = gradcamo_penalty(logits.float(), capture.output, target, cell)
                loss = loss + gradcamo_weight * penalty
                penalties.append(float(penalty.detach()))
                scores.extend(batch_scores.detach().cpu().numpy().tolist())
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
    finally:
        if use_penalty:
            capture.remove()
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "accuracy": correct / max(1, len(order)),
        "penalty": float(np.mean(penalties)) if penalties else float("nan"),
        "train_gradcamo": float(np.nanmedian(scores)) if scores else float("nan"),
        "steps": step - step_offset,
    }


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return int(np.ceil(n / batch_size))


def _make_optimizer(model, lr: float, weight_decay: float, total_steps: int):
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
    gradcamo_weight: float = 0.0,
    target_layer: str | None = None,
    jitter: float = 0.1,
) -> History:
    """Train ``model`` in place with AdamW and a one-cycle (cosine) learning-rate schedule; returns the history.

    ``gradcamo_weight`` λ > 0 adds λ·(1 − Grad-CAMO) of the true class's Grad-CAM at ``target_layer``
    (see :mod:`.regularizer`; needs ``train.masks``). λ = 0 runs exactly the plain loop.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    optimizer, schedule = _make_optimizer(model, lr, weight_decay, epochs * _steps_per_epoch(len(train), batch_size))
    state = _LoopState(model, optimizer, schedule, rng)
    history = History()
    rows = np.arange(len(train))
    for epoch in range(epochs):
        order = rows[rng.permutation(len(train))]
        stats = _run_epoch(state, train, order, normalization, batch_size=batch_size, device=device, jitter=jitter,
                           gradcamo_weight=gradcamo_weight, target_layer=target_layer, cancel=cancel)
        history.loss.append(stats["loss"])
        history.accuracy.append(stats["accuracy"])
        history.penalty.append(stats["penalty"])
        history.train_gradcamo.append(stats["train_gradcamo"])
        if validation is not None:
            val = evaluate(model, validation, np.arange(len(validation)), normalization, device=device)
            history.val_accuracy.append(val["accuracy"])
            history.val_loss.append(val["loss"])
        report(progress, epoch + 1, epochs, f"loss {history.loss[-1]:.3f}")
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------- splits


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


@dataclass
class TrainConfig:
    """Everything ``gradcamo train`` needs besides the data; stored in the checkpoint's ``training``."""

    architecture: str = "small-cnn-3d"
    architecture_kwargs: dict = field(default_factory=lambda: {"width": 8})
    target_layer: str | None = None  # None: stored by the validation rule (audit.layer_sweep.choose_layer)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    patience: int = 5
    balance: str = "loss"  # 'loss' (class-weighted cross-entropy), 'sampler' (balanced draws) or 'none'
    jitter: float = 0.1
    gradcamo_weight: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    head: str = "softmax"  # softmax | sigmoid-binary | multilabel (models/heads.py)

    def validate(self) -> None:
        if self.balance not in ("loss", "sampler", "none"):
            raise ValueError(f"balance must be 'loss', 'sampler' or 'none', got {self.balance!r}.")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be ≥ 1 and batch_size ≥ 2 (batch norm needs two crops).")
        if self.gradcamo_weight < 0:
            raise ValueError("--gradcamo-weight must be ≥ 0.")
        from napari_gradcamo.models.heads import HEADS

        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}.")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.jitter >= 0 and self.patience >= 0):
            raise ValueError("--lr must be > 0; --weight-decay, --jitter and --patience must be ≥ 0.")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("--val-fraction and --test-fraction must be in 0..1 and leave wells for training.")


@dataclass
class FitResult:
    model: object
    metadata: object  # ModelMetadata
    history: History
    split: dict
    best_epoch: int
    stopped_early: bool
    checkpoint: Path | None = None
    test: dict | None = None


def git_revision(path: str | Path | None = None) -> dict:
    """The git commit (and whether the tree had changes) of the source tree holding ``path``; {} outside git."""
    folder = Path(path or __file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10)
        return {"git_revision": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def _environment() -> dict:
    import platform

    import torch

    from napari_gradcamo import __version__

    return {"napari_gradcamo": __version__, "torch": torch.__version__, "python": platform.python_version(),
            **git_revision()}


RESUME_FILE = "resume.pt"
BEST_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"


#: Validation crops :func:`_stored_layer` uses at most (spread evenly over the validation split).
LAYER_RULE_CROPS = 256


def _default_layer(model, meta) -> str:
    """The layer the Grad-CAMO penalty uses during training (the stored layer is :func:`_stored_layer`'s)."""
    from napari_gradcamo.audit.cam import default_target_layer, list_target_layers
    from napari_gradcamo.models.architectures import SMALL_CNN, SMALL_CNN_2D

    if meta.architecture in (SMALL_CNN, SMALL_CNN_2D):
        return "stage1"  # 8×16×16 on an 8×32×32 crop: resolves single cells (see experiment.TARGET_LAYER)
    return default_target_layer(list_target_layers(model, meta.crop_shape, len(meta.channel_names)))


def _stored_layer(model, data: CropSet, rows: Sequence[int], normalization: dict, meta, fallback: str,
                  device) -> tuple[str, dict]:
    """The layer stored with the trained model: :func:`napari_gradcamo.audit.layer_sweep.choose_layer`
    (deletion rule) on the validation crops; ``fallback`` when there are no validation crops or masks."""
    from napari_gradcamo.audit.layer_sweep import DELETION_FRACTION, choose_layer

    if len(rows) == 0 or data.masks is None:
        return fallback, {"rule": "fallback (no validation crops with masks)", "layer": fallback}
    rows = np.asarray(rows)
    rows = np.sort(rows[np.linspace(0, len(rows) - 1, min(len(rows), LAYER_RULE_CROPS)).astype(int)])
    layer, drops = choose_layer(model, np.asarray(data.x[rows]), np.asarray(data.masks[rows]), data.y[rows],
                                normalization, meta.crop_shape, device=device)
    return layer, {"rule": f"largest mean drop of the true class's probability with the top {DELETION_FRACTION:.0%} "
                           "of each validation crop's map replaced by background", "layer": layer,
                   "deletion_drop": drops, "validation_crops": int(len(rows))}


def fit(
    data: CropSet,
    class_names: Sequence[str],
    channel_names: Sequence[str],
    crop_shape: Sequence[int],
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    extra_metadata: dict | None = None,
    input_metadata: dict | None = None,
    progress: ProgressCallback | None = None,
    epoch_end=None,
    cancel: CancelToken | None = None,
) -> FitResult:
    """Train a new classifier on ``data`` as ``gradcamo train`` does.

    Split by well (``data.groups``), normalisation fitted on the training wells (chunked; ``data.x`` may
    be a memory map), AdamW + one-cycle LR over ``epochs``, early stopping when the validation loss has not
    improved for ``patience`` epochs (the best epoch's weights are kept), mixed precision on CUDA. With
    ``out_dir``: ``model.safetensors`` (best), ``last.safetensors``, ``resume.pt`` after every epoch,
    ``history.csv``; ``resume=True`` continues from ``resume.pt`` exactly where it stopped.
    ``epoch_end(epoch, stats)`` is called after each epoch. ``input_metadata`` (``voxel_size``,
    ``crop_mode``, ``padding_value``) records how the crops were made.
    """
    import torch

    from napari_gradcamo.audit.cam import pick_device
    from napari_gradcamo.models.architectures import build_model
    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata
    from napari_gradcamo.train.resume import load_resume, save_resume

    config.validate()
    n_classes = len(class_names)
    labels_seen = np.unique(np.asarray(data.y))
    if len(labels_seen) and (labels_seen.min() < 0 or labels_seen.max() >= n_classes):
        raise ValueError(f"Some crops have classes outside the {n_classes} class names {list(class_names)}; "
                         "list every class of the manifest (or drop its rows).")
    out = Path(out_dir) if out_dir is not None else None
    device = pick_device(config.device)
    amp = bool(config.amp and device.type == "cuda")
    split = split_by_group(data.groups, data.y, config.val_fraction, config.test_fraction, config.seed)
    if len(split["train"]) < 2:
        raise ValueError("Fewer than two training crops after the split by well; add wells or lower --val-fraction.")
    normalization = fit_normalization_rows(data.x, split["train"])
    present = np.unique(data.y[split["train"]])
    if len(present) < 2:
        raise ValueError(
            f"The training wells hold only class(es) {[class_names[i] for i in present]}; every class needs wells "
            "in the training split (add wells, or lower --val-fraction/--test-fraction)."
        )
    weights = class_weights_for(data.y[split["train"]], n_classes) if config.balance == "loss" else None
    kwargs = dict(config.architecture_kwargs)
    meta = ModelMetadata(config.architecture, list(class_names), list(channel_names), [int(s) for s in crop_shape],
                         architecture_kwargs=kwargs, normalization=normalization, head=config.head,
                         **(input_metadata or {}))
    torch.manual_seed(config.seed)
    model = build_model(meta).to(device)
    layer = config.target_layer or _default_layer(model, meta)
    meta.target_layer = layer
    steps_per_epoch = _steps_per_epoch(len(split["train"]), config.batch_size)
    optimizer, schedule = _make_optimizer(model, config.lr, config.weight_decay, config.epochs * steps_per_epoch)
    scaler = None
    if amp and not torch.cuda.is_bf16_supported():
        scaler = torch.amp.GradScaler("cuda")
    rng = np.random.default_rng(config.seed)
    state = _LoopState(model, optimizer, schedule, rng, scaler)
    history = History()
    best = {"epoch": -1, "val_loss": math.inf, "state": None}
    start_epoch, bad_epochs, stopped_early = 0, 0, False
    split_record = {
        name: sorted(set(np.asarray(data.groups)[rows].astype(str).tolist())) for name, rows in split.items()
    }
    config_dict = asdict(config)
    if resume:
        if out is None:
            raise ValueError("Nothing to resume: no output folder was given.")
        saved = load_resume(out / RESUME_FILE)
        saved_config = saved["config"]
        fixed = [k for k in config_dict if k not in ("epochs", "device", "patience") and saved_config.get(k) != config_dict[k]]
        if fixed:
            raise ValueError(f"Cannot resume: the training settings {fixed} differ from the interrupted run's.")
        if saved["split"] != split_record:
            raise ValueError("Cannot resume: the crops or wells differ from the interrupted run's (its split differs).")
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            if scaler is not None and "scaler" in saved:
                scaler.load_state_dict(saved["scaler"])
            rng.bit_generator.state = saved["numpy_rng"]
            torch.set_rng_state(saved["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{RESUME_FILE} does not fit this model or run ({type(error).__name__}: {error}); delete it "
                             "and train again without --resume.") from None
        for key, values in saved["history"].items():
            getattr(history, key).extend(values)
        best = {"epoch": int(saved["best_epoch"]), "val_loss": float(saved["best_val_loss"]),
                "state": saved.get("best_model")}
        start_epoch, bad_epochs = int(saved["epoch"]), int(saved["bad_epochs"])
        stopped_early = bool(saved.get("stopped_early", False))
        if config.epochs != saved_config["epochs"]:
            raise ValueError("Cannot resume with a different --epochs (the LR schedule spans the planned epochs).")

    def metadata_for(epoch_done: int) -> ModelMetadata:
        meta.training = {
            "config": config_dict,
            "class_counts": {class_names[int(c)]: int((data.y[split["train"]] == c).sum()) for c in range(n_classes)},
            "crops": {name: int(len(rows)) for name, rows in split.items()},
            "split_wells": split_record,
            "class_weights": None if weights is None else [float(w) for w in weights],
            "history": history.as_dict(),
            "best_epoch": best["epoch"] + 1,
            "epochs_run": epoch_done,
            "stopped_early": stopped_early,
            "device": str(device),
            "mixed_precision": amp,
            **_environment(),
            **(extra_metadata or {}),
        }
        return meta

    def snapshot():
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        if stopped_early:
            break
        order = epoch_order(data.y, split["train"], rng, None if config.balance != "sampler" else "sampler")
        stats = _run_epoch(
            state, data, order, normalization, batch_size=config.batch_size, device=device, jitter=config.jitter,
            class_weights=weights, gradcamo_weight=config.gradcamo_weight, target_layer=layer, amp=amp,
            progress=progress, cancel=cancel, step_offset=epoch * steps_per_epoch,
            total_steps=config.epochs * steps_per_epoch, epoch_label=f"epoch {epoch + 1}/{config.epochs} ",
            head=config.head,
        )
        history.loss.append(stats["loss"])
        history.accuracy.append(stats["accuracy"])
        history.penalty.append(stats["penalty"])
        history.train_gradcamo.append(stats["train_gradcamo"])
        history.lr.append(float(schedule.get_last_lr()[0]))
        if len(split["val"]):
            val = evaluate(model, data, split["val"], normalization, batch_size=max(config.batch_size, 32),
                           device=device, class_weights=weights, amp=amp, head=config.head)
            history.val_loss.append(val["loss"])
            history.val_accuracy.append(val["accuracy"])
            improved = val["loss"] < best["val_loss"]
        else:
            improved = True  # no validation wells: keep the last epoch
        if improved:
            best = {"epoch": epoch, "val_loss": history.val_loss[-1] if history.val_loss else math.inf,
                    "state": snapshot()}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if config.patience > 0 and bad_epochs >= config.patience:
                stopped_early = True
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(out / LAST_FILE, model, metadata_for(epoch + 1))
            saved = {
                "model": snapshot(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                "history": json.dumps(history.as_dict()), "best_epoch": best["epoch"],
                "best_val_loss": best["val_loss"], "best_model": best["state"], "epoch": epoch + 1,
                "bad_epochs": bad_epochs, "stopped_early": stopped_early, "config": json.dumps(config_dict),
                "split": json.dumps(split_record),
            }
            if scaler is not None:
                saved["scaler"] = scaler.state_dict()
            save_resume(out / RESUME_FILE, saved)
            _write_history(out / "history.csv", history)
        if epoch_end is not None:
            epoch_end(epoch + 1, {**stats, "val_loss": history.val_loss[-1] if history.val_loss else None,
                                  "val_accuracy": history.val_accuracy[-1] if history.val_accuracy else None})
        report(progress, (epoch + 1) * steps_per_epoch, config.epochs * steps_per_epoch, _epoch_message(epoch, config, history))
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    epochs_run = len(history.loss)
    meta = metadata_for(epochs_run)
    if not config.target_layer:
        meta.target_layer, meta.training["target_layer_rule"] = _stored_layer(
            model, data, split["val"], normalization, meta, layer, device)
    test = None
    if len(split["test"]):
        test = evaluate(model, data, split["test"], normalization, device=device, head=config.head)
        meta.training["test"] = test
    checkpoint = save_checkpoint(out / BEST_FILE, model, meta) if out is not None else None
    return FitResult(model.cpu(), meta, history, split, best["epoch"] + 1, stopped_early, checkpoint, test)


def _epoch_message(epoch: int, config: TrainConfig, history: History) -> str:
    text = f"epoch {epoch + 1}/{config.epochs} loss {history.loss[-1]:.3f} acc {history.accuracy[-1]:.2f}"
    if history.val_accuracy:
        text += f" | val loss {history.val_loss[-1]:.3f} acc {history.val_accuracy[-1]:.2f}"
    if config.gradcamo_weight > 0:
        text += f" | penalty {history.penalty[-1]:.3f}"
    return text


def _write_history(path: Path, history: History) -> None:
    import pandas as pd

    d = history.as_dict()
    n = len(d["loss"])
    table = pd.DataFrame({k: (v + [float("nan")] * (n - len(v)))[:n] for k, v in d.items()})
    table.insert(0, "epoch", np.arange(1, n + 1))
    write_with(path, lambda temp: table.to_csv(temp, index=False))
