"""``gradcamo train``'s resumable training run: split, normalise, train with early stopping, store the
checkpoint with full metadata (see :func:`fit`)."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.crops.datasets import CropSet
from napari_gradcamo.io.atomic import write_with
from napari_gradcamo.progress import CancelToken, ProgressCallback, report
from napari_gradcamo.train.data import class_weights_for, epoch_order, fit_normalization_rows, split_by_group
from napari_gradcamo.train.loop import History, LoopState, count_steps, evaluate, make_optimizer, run_epoch
from napari_gradcamo.train.regularizer import regularizer_record


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
    outside_gradient_weight: float = 0.0  # λ of the outside-gradient penalty (train/regularizer.py)
    context_randomisation: float = 0.0  # probability that a training crop takes another crop's context
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    head: str = "softmax"  # softmax | sigmoid-binary | multilabel (models/heads.py)
    crop_mode: str = "context"  # "context" (neighbours kept) or "masked" (outside the cell = padding_value)
    padding_value: float = 0.0  # in normalised units, as the audit pads

    def validate(self) -> None:
        if self.balance not in ("loss", "sampler", "none"):
            raise ValueError(f"balance must be 'loss', 'sampler' or 'none', got {self.balance!r}.")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be ≥ 1 and batch_size ≥ 2 (batch norm needs two crops).")
        if not self.outside_gradient_weight >= 0:
            raise ValueError("--outside-gradient-weight must be ≥ 0.")
        if not 0 <= self.context_randomisation <= 1:
            raise ValueError("--context-randomisation is a probability: give a value in 0..1.")
        if self.crop_mode not in ("context", "masked"):
            raise ValueError(f"crop_mode must be 'context' or 'masked', got {self.crop_mode!r}.")
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


def environment() -> dict:
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
    """The layer recorded while training runs (the stored layer is :func:`_stored_layer`'s when the user named none)."""
    from napari_gradcamo.models.architectures import SMALL_CNN, SMALL_CNN_2D
    from napari_gradcamo.models.layers import default_target_layer, list_target_layers

    if meta.architecture in (SMALL_CNN, SMALL_CNN_2D):
        return "stage1"  # 8×16×16 on an 8×32×32 crop: resolves single cells (see experiment.TARGET_LAYER)
    return default_target_layer(list_target_layers(model, meta.crop_shape, len(meta.channel_names)))


def _stored_layer(model, data: CropSet, rows: Sequence[int], normalization: dict, meta, fallback: str,
                  device) -> tuple[str, dict]:
    """The layer stored with the trained model: :func:`napari_gradcamo.audit.layer_sweep.choose_layer`
    (deletion rule) on the validation crops; ``fallback`` when there are no validation crops or masks."""
    from napari_gradcamo.audit.layer_sweep import DELETION_FRACTION, choose_layer
    from napari_gradcamo.models.layers import model_spatial_dims

    if len(rows) == 0 or data.masks is None:
        return fallback, {"rule": "fallback (no validation crops with masks)", "layer": fallback}
    if meta.head != "softmax" or model_spatial_dims(model) not in (2, 3):
        return fallback, {"rule": "fallback (the deletion rule covers 2D and 3D softmax classifiers only)",
                          "layer": fallback}
    if meta.crop_mode == "masked":
        return fallback, {"rule": "fallback (the deletion rule hides context, which masked crops do not have)",
                          "layer": fallback}
    rows = np.asarray(rows)
    rows = np.sort(rows[np.linspace(0, len(rows) - 1, min(len(rows), LAYER_RULE_CROPS)).astype(int)])
    try:
        layer, drops = choose_layer(model, np.asarray(data.x[rows]), np.asarray(data.masks[rows]), data.y[rows],
                                    normalization, meta.crop_shape, device=device)
    except (RuntimeError, ValueError) as error:  # e.g. in-place activations after a hooked layer (DenseNet)
        return fallback, {"rule": f"fallback (the deletion rule could not run on this model: {error})",
                          "layer": fallback}
    return layer, {"rule": f"largest mean drop of the true class's probability with the top {DELETION_FRACTION:.0%} "
                           "of each validation crop's map replaced by background", "layer": layer,
                   "deletion_drop": drops, "validation_crops": int(len(rows))}


@dataclass
class _Run:
    """The state of one training run that the steps of :func:`fit` share and ``resume.pt`` saves."""

    model: object
    meta: object  # ModelMetadata
    split: dict
    split_record: dict
    normalization: dict
    weights: np.ndarray | None
    layer: str
    loop: LoopState
    steps_per_epoch: int
    history: History = field(default_factory=History)
    best: dict = field(default_factory=lambda: {"epoch": -1, "val_loss": math.inf, "state": None})
    start_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False

    def snapshot(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


def _check_classes(data: CropSet, class_names: Sequence[str]) -> None:
    labels_seen = np.unique(np.asarray(data.y))
    if len(labels_seen) and (labels_seen.min() < 0 or labels_seen.max() >= len(class_names)):
        raise ValueError(f"Some crops have classes outside the {len(class_names)} class names {list(class_names)}; "
                         "list every class of the manifest (or drop its rows).")


def _split_and_normalise(data: CropSet, class_names: Sequence[str], config: TrainConfig):
    """Wells split into train/val/test, the normalisation fitted on the training wells, class weights."""
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
    weights = class_weights_for(data.y[split["train"]], len(class_names)) if config.balance == "loss" else None
    return split, normalization, weights


def _start_run(data, class_names, channel_names, crop_shape, config, input_metadata, device,
               trusted_factory: str | None = None) -> _Run:
    """A new model (seeded), its metadata, optimiser, schedule and loop state."""
    import torch

    from napari_gradcamo.models.architectures import build_model
    from napari_gradcamo.models.metadata import ModelMetadata

    split, normalization, weights = _split_and_normalise(data, class_names, config)
    meta = ModelMetadata(config.architecture, list(class_names), list(channel_names), [int(s) for s in crop_shape],
                         architecture_kwargs=dict(config.architecture_kwargs), normalization=normalization,
                         head=config.head, crop_mode=config.crop_mode, padding_value=float(config.padding_value),
                         **(input_metadata or {}))
    torch.manual_seed(config.seed)
    model = build_model(meta, trusted_factory=trusted_factory).to(device)
    layer = config.target_layer or _default_layer(model, meta)
    meta.target_layer = layer
    steps = count_steps(len(split["train"]), config.batch_size)
    optimizer, schedule = make_optimizer(model, config.lr, config.weight_decay, config.epochs * steps)
    amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if amp and not torch.cuda.is_bf16_supported() else None
    split_record = {name: sorted(set(np.asarray(data.groups)[rows].astype(str).tolist())) for name, rows in split.items()}
    loop = LoopState(model, optimizer, schedule, np.random.default_rng(config.seed), scaler)
    return _Run(model, meta, split, split_record, normalization, weights, layer, loop, steps)


def _restore(run: _Run, out: Path | None, config: TrainConfig) -> None:
    """Continue the interrupted run saved in ``out/resume.pt`` exactly where it stopped (same settings, same wells)."""
    import torch

    from napari_gradcamo.train.resume import load_resume

    if out is None:
        raise ValueError("Nothing to resume: no output folder was given.")
    saved = load_resume(out / RESUME_FILE)
    saved_config, config_dict = saved["config"], asdict(config)
    if saved_config.get("gradcamo_weight", 0.0) > 0:
        raise ValueError("Cannot resume: the interrupted run used the Grad-CAMO-share penalty (--gradcamo-weight), "
                         "which this version no longer has; train again without --resume.")
    defaults = asdict(TrainConfig())
    fixed = [k for k in config_dict if k not in ("epochs", "device", "patience")
             and saved_config.get(k, defaults[k]) != config_dict[k]]
    if fixed:
        from napari_gradcamo.output.provenance import setting_differences

        details = setting_differences({k: saved_config.get(k, "(absent)") for k in fixed},
                                      json.loads(json.dumps({k: config_dict[k] for k in fixed}, default=str)))
        raise ValueError(f"Cannot resume: the training settings differ from the interrupted run's "
                         f"({'; '.join(details)}); give the same options as before, or train again without --resume.")
    if saved["split"] != run.split_record:
        raise ValueError("Cannot resume: the crops or wells differ from the interrupted run's (its split differs).")
    if config.epochs != saved_config["epochs"]:
        raise ValueError("Cannot resume with a different --epochs (the LR schedule spans the planned epochs).")
    loop = run.loop
    try:
        run.model.load_state_dict(saved["model"])
        loop.optimizer.load_state_dict(saved["optimizer"])
        loop.schedule.load_state_dict(saved["schedule"])
        if loop.scaler is not None and "scaler" in saved:
            loop.scaler.load_state_dict(saved["scaler"])
        loop.rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{RESUME_FILE} does not fit this model or run ({type(error).__name__}: {error}); delete it "
                         "and train again without --resume.") from None
    for key, values in saved["history"].items():
        if hasattr(run.history, key):  # a history column of an older version is dropped
            getattr(run.history, key).extend(values)
    run.best = {"epoch": int(saved["best_epoch"]), "val_loss": float(saved["best_val_loss"]),
                "state": saved.get("best_model")}
    run.start_epoch, run.bad_epochs = int(saved["epoch"]), int(saved["bad_epochs"])
    run.stopped_early = bool(saved.get("stopped_early", False))


def _record_training(run: _Run, data: CropSet, class_names, config: TrainConfig, epochs_done: int, device,
                     extra_metadata: dict | None) -> object:
    """The checkpoint metadata with the ``training`` record as of ``epochs_done``."""
    train_y = data.y[run.split["train"]]
    run.meta.training = {
        "config": asdict(config),
        "class_counts": {name: int((train_y == c).sum()) for c, name in enumerate(class_names)},
        "crops": {name: int(len(rows)) for name, rows in run.split.items()},
        "split_wells": run.split_record,
        "class_weights": None if run.weights is None else [float(w) for w in run.weights],
        "regularizer": regularizer_record(config.outside_gradient_weight, config.context_randomisation),
        "history": run.history.as_dict(),
        "best_epoch": run.best["epoch"] + 1,
        "epochs_run": epochs_done,
        "stopped_early": run.stopped_early,
        "device": str(device),
        "mixed_precision": run.loop.scaler is not None or bool(config.amp and device.type == "cuda"),
        **environment(),
        **(extra_metadata or {}),
    }
    return run.meta


def _train_epoch(run: _Run, data: CropSet, epoch: int, config: TrainConfig, device, progress, cancel) -> dict:
    """One epoch of training, then validation; updates the history, the best weights and early stopping."""
    amp = bool(config.amp and device.type == "cuda")
    order = epoch_order(data.y, run.split["train"], run.loop.rng, None if config.balance != "sampler" else "sampler")
    stats = run_epoch(
        run.loop, data, order, run.normalization, batch_size=config.batch_size, device=device, jitter=config.jitter,
        class_weights=run.weights, outside_gradient_weight=config.outside_gradient_weight,
        context_randomisation=config.context_randomisation, amp=amp,
        progress=progress, cancel=cancel, step_offset=epoch * run.steps_per_epoch,
        total_steps=config.epochs * run.steps_per_epoch, epoch_label=f"epoch {epoch + 1}/{config.epochs} ",
        head=config.head, crop_mode=config.crop_mode, padding_value=config.padding_value,
    )
    history = run.history
    history.loss.append(stats["loss"])
    history.accuracy.append(stats["accuracy"])
    history.penalty.append(stats["penalty"])
    history.outside_gradient_share.append(stats["outside_gradient_share"])
    history.lr.append(float(run.loop.schedule.get_last_lr()[0]))
    improved = True  # no validation wells: keep the last epoch
    if len(run.split["val"]):
        val = evaluate(run.model, data, run.split["val"], run.normalization, batch_size=max(config.batch_size, 32),
                       device=device, class_weights=run.weights, amp=amp, head=config.head, crop_mode=config.crop_mode,
                       padding_value=config.padding_value)
        history.val_loss.append(val["loss"])
        history.val_accuracy.append(val["accuracy"])
        improved = val["loss"] < run.best["val_loss"]
    if improved:
        run.best = {"epoch": epoch, "val_loss": history.val_loss[-1] if history.val_loss else math.inf,
                    "state": run.snapshot()}
        run.bad_epochs = 0
    else:
        run.bad_epochs += 1
        run.stopped_early = config.patience > 0 and run.bad_epochs >= config.patience
    return stats


def _save_epoch(run: _Run, out: Path, epoch_done: int, config: TrainConfig, meta) -> None:
    """``last.safetensors``, ``resume.pt`` and ``history.csv`` after an epoch (each written atomically)."""
    import torch

    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.train.resume import save_resume

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / LAST_FILE, run.model, meta)
    loop = run.loop
    saved = {
        "model": run.snapshot(), "optimizer": loop.optimizer.state_dict(), "schedule": loop.schedule.state_dict(),
        "numpy_rng": json.dumps(loop.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
        "history": json.dumps(run.history.as_dict()), "best_epoch": run.best["epoch"],
        "best_val_loss": run.best["val_loss"], "best_model": run.best["state"], "epoch": epoch_done,
        "bad_epochs": run.bad_epochs, "stopped_early": run.stopped_early, "config": json.dumps(asdict(config)),
        "split": json.dumps(run.split_record),
    }
    if loop.scaler is not None:
        saved["scaler"] = loop.scaler.state_dict()
    save_resume(out / RESUME_FILE, saved)
    _write_history(out / "history.csv", run.history)


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
    trusted_factory: str | None = None,
) -> FitResult:
    """Train a new classifier on ``data`` as ``gradcamo train`` does.

    Split by well (``data.groups``), normalisation fitted on the training wells (chunked; ``data.x`` may
    be a memory map), AdamW + one-cycle LR over ``epochs``, early stopping when the validation loss has not
    improved for ``patience`` epochs (the best epoch's weights are kept), mixed precision on CUDA. With
    ``out_dir``: ``model.safetensors`` (best), ``last.safetensors``, ``resume.pt`` after every epoch,
    ``history.csv``; ``resume=True`` continues from ``resume.pt`` exactly where it stopped.
    ``epoch_end(epoch, stats)`` is called after each epoch. ``input_metadata`` (``voxel_size``,
    ``crop_mode``, ``padding_value``) records how the crops were made; ``trusted_factory`` is the factory of a
    ``custom`` architecture that the user named (see :func:`napari_gradcamo.models.architectures.build_model`).
    """
    from napari_gradcamo.audit.cam import pick_device
    from napari_gradcamo.models.checkpoint import save_checkpoint

    config.validate()
    _check_classes(data, class_names)
    out = Path(out_dir) if out_dir is not None else None
    device = pick_device(config.device)
    run = _start_run(data, class_names, channel_names, crop_shape, config, input_metadata, device, trusted_factory)
    if resume:
        _restore(run, out, config)
    total_steps = config.epochs * run.steps_per_epoch
    for epoch in range(run.start_epoch, config.epochs):
        if run.stopped_early:
            break
        stats = _train_epoch(run, data, epoch, config, device, progress, cancel)
        if out is not None:
            _save_epoch(run, out, epoch + 1, config,
                        _record_training(run, data, class_names, config, epoch + 1, device, extra_metadata))
        if epoch_end is not None:
            epoch_end(epoch + 1, {**stats, "val_loss": run.history.val_loss[-1] if run.history.val_loss else None,
                                  "val_accuracy": run.history.val_accuracy[-1] if run.history.val_accuracy else None})
        report(progress, (epoch + 1) * run.steps_per_epoch, total_steps, _epoch_message(epoch, config, run.history))
    if run.best["state"] is not None:
        run.model.load_state_dict(run.best["state"])
    run.model.eval()
    meta = _record_training(run, data, class_names, config, len(run.history.loss), device, extra_metadata)
    if not config.target_layer:
        meta.target_layer, meta.training["target_layer_rule"] = _stored_layer(
            run.model, data, run.split["val"], run.normalization, meta, run.layer, device)
    test = None
    if len(run.split["test"]):
        test = evaluate(run.model, data, run.split["test"], run.normalization, device=device, head=config.head,
                        crop_mode=config.crop_mode, padding_value=config.padding_value)
        meta.training["test"] = test
    checkpoint = save_checkpoint(out / BEST_FILE, run.model, meta) if out is not None else None
    return FitResult(run.model.cpu(), meta, run.history, run.split, run.best["epoch"] + 1, run.stopped_early,
                     checkpoint, test)


def _epoch_message(epoch: int, config: TrainConfig, history: History) -> str:
    text = f"epoch {epoch + 1}/{config.epochs} loss {history.loss[-1]:.3f} acc {history.accuracy[-1]:.2f}"
    if history.val_accuracy:
        text += f" | val loss {history.val_loss[-1]:.3f} acc {history.val_accuracy[-1]:.2f}"
    if config.outside_gradient_weight > 0:
        text += f" | outside-gradient penalty {history.penalty[-1]:.3g}"
    return text


def _write_history(path: Path, history: History) -> None:
    import pandas as pd

    d = history.as_dict()
    n = len(d["loss"])
    table = pd.DataFrame({k: (v + [float("nan")] * (n - len(v)))[:n] for k, v in d.items()})
    table.insert(0, "epoch", np.arange(1, n + 1))
    write_with(path, lambda temp: table.to_csv(temp, index=False))
