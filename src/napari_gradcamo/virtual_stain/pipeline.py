"""Train a complete virtual-stain model, and evaluate one under every sampling condition it supports."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from napari_gradcamo.progress import CancelToken, ProgressCallback, report
from napari_gradcamo.synthetic.generator import STAINS
from napari_gradcamo.virtual_stain.checkpoint import VirtualStainModel
from napari_gradcamo.virtual_stain.data import CellCrops, PairedImage, StainScaling
from napari_gradcamo.virtual_stain.diffusion import Schedule, sample, train_denoiser, train_noisy_stain_classifier
from napari_gradcamo.virtual_stain.evaluate import evaluate_predictions, guidance_gradcamo, label_signal
from napari_gradcamo.virtual_stain.model import (
    ClassifierConfig,
    NoisyClassifier,
    UNetConfig,
    VirtualStainError,
    build_unet,
    check_names,
    non_finite_weights,
)


@dataclass
class FitSettings:
    """How to train: ``labelled`` = AdaGN class embedding; ``classifier_steps`` > 0 = a guidance classifier."""

    labelled: bool = True
    steps: int = 400
    classifier_steps: int = 300
    crop: int = 32
    batch: int = 8
    lr: float = 1e-3
    label_dropout: float = 0.2
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Refuse values training cannot use (``VirtualStainError`` naming the setting and the fix), before
        any data is read: steps ≥ 1, classifier steps ≥ 0, a crop the U-Net can halve ``len(widths) - 1``
        times, batch ≥ 1, a positive learning rate, label dropout in 0..1."""
        def whole(name, minimum):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise VirtualStainError(f"{name} must be a whole number ≥ {minimum}, got {value!r}"
                                        f"{' (--' + name.replace('_', '-') + ')' if name != 'batch' else ' (--batch-size)'}.")

        whole("steps", 1)
        whole("classifier_steps", 0)
        whole("batch", 1)
        whole("seed", 0)
        if not isinstance(self.widths, (list, tuple)) or not self.widths or any(
                isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise VirtualStainError(f"widths must be whole numbers ≥ 1 (--widths), got {self.widths!r}.")
        depth = 2 ** (len(self.widths) - 1)
        whole("crop", 1)
        if self.crop % depth:
            raise VirtualStainError(f"crop {self.crop} must be a multiple of {depth} (the U-Net halves it "
                                    f"{len(self.widths) - 1} times for --widths {' '.join(map(str, self.widths))}); "
                                    f"use e.g. --crop {max(depth, self.crop - self.crop % depth)}.")
        for name, low, high in (("lr", 0.0, 1.0), ("label_dropout", 0.0, 1.0)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not (low < value <= high if name == "lr" else low <= value <= high):
                raise VirtualStainError(f"{name} must be a number in {'(0, 1] (--lr; 1e-3 is the default)' if name == 'lr' else '[0, 1]'}, "
                                        f"got {value!r}.")


def fit_model(pairs: Sequence[PairedImage], class_names: Sequence[str], settings: FitSettings, *,
              defocus_um: Sequence[float], stain_names: Sequence[str] = STAINS,
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> VirtualStainModel:
    """Fit the stain scaling, the U-Net and (optionally) the guidance classifier on ``pairs``."""
    import torch

    settings.validate()
    class_names = check_names(class_names, "class names")
    check_names(stain_names, "stain names")
    if not pairs:
        raise VirtualStainError("no training images.")
    if any(not 0 <= int(p.treatment) < len(class_names) for p in pairs):
        raise VirtualStainError(f"an image's class index is outside 0..{len(class_names) - 1} ({class_names}).")
    if min(min(p.stains.shape[1:]) for p in pairs) < settings.crop:
        raise VirtualStainError(f"every image must be at least {settings.crop} pixels on each side (the crop size).")
    n_stains, n_planes = pairs[0].stains.shape[0], pairs[0].brightfield.shape[0]
    if any(p.stains.shape[0] != n_stains or p.brightfield.shape[0] != n_planes for p in pairs):
        raise VirtualStainError("every image must have the same number of stains and brightfield planes.")
    torch.manual_seed(settings.seed)
    scaling = StainScaling.fit([p.stains for p in pairs])
    schedule = Schedule()
    n_classes = len(class_names)
    unet_config = UNetConfig(stain_channels=n_stains, condition_channels=n_planes, widths=list(settings.widths),
                             n_classes=n_classes if settings.labelled else None)
    unet = build_unet(unet_config)
    total = settings.steps + settings.classifier_steps
    started = time.perf_counter()
    losses = train_denoiser(
        unet, pairs, scaling, schedule, steps=settings.steps, crop=settings.crop, batch=settings.batch,
        lr=settings.lr, label_dropout=settings.label_dropout, seed=settings.seed, device=settings.device,
        prediction=unet_config.prediction, progress=lambda d, t, m: report(progress, d, total, m), cancel=cancel)
    unet_seconds = time.perf_counter() - started
    classifier = classifier_config = None
    classifier_losses: list[float] = []
    if settings.classifier_steps > 0 and n_classes >= 2:
        classifier_config = ClassifierConfig(stain_channels=n_stains, n_classes=n_classes, widths=list(settings.widths))
        classifier = NoisyClassifier(classifier_config)
        classifier_losses = train_noisy_stain_classifier(
            classifier, pairs, scaling, schedule, steps=settings.classifier_steps, crop=settings.crop,
            seed=settings.seed, device=settings.device, cancel=cancel,
            progress=lambda d, t, m: report(progress, settings.steps + d, total, m))
    training = {"steps": settings.steps, "classifier_steps": settings.classifier_steps, "crop": settings.crop,
                "batch": settings.batch, "lr": settings.lr, "label_dropout": settings.label_dropout,
                "seed": settings.seed, "n_images": len(pairs), "final_loss": float(np.mean(losses[-20:])),
                "classifier_final_loss": float(np.mean(classifier_losses[-20:])) if classifier_losses else None,
                "unet_seconds_per_step": unet_seconds / max(settings.steps, 1)}
    _refuse_diverged(unet, "U-Net")
    if classifier is not None:
        _refuse_diverged(classifier, "guidance classifier")
    return VirtualStainModel(unet.cpu().eval(), unet_config, schedule, scaling, list(stain_names), list(class_names),
                             [float(d) for d in defocus_um], None if classifier is None else classifier.cpu().eval(),
                             classifier_config, training)


def _refuse_diverged(module, what: str) -> None:
    """Training that ended with NaN/inf weights would save a model whose every prediction is NaN."""
    bad = non_finite_weights(module)
    if bad:
        raise VirtualStainError(f"training diverged: the {what}'s weights {bad[:3]} hold NaN or inf; nothing was "
                                "saved. Lower the learning rate (--lr) or check the images.")


def _class_probability(classifier, stains: np.ndarray, classes: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        logits = classifier(torch.as_tensor(stains, dtype=torch.float32), torch.zeros(len(stains), dtype=torch.long))
        p = torch.softmax(logits, 1).numpy()
    return float(p[np.arange(len(classes)), classes].mean())


def _audit_columns(model: VirtualStainModel, stains: np.ndarray, crops: CellCrops) -> dict:
    """The guidance classifier's view of a set of stains: P(true class) and its Grad-CAMO."""
    if model.classifier is None:
        return {}
    cams = guidance_gradcamo(model.classifier, stains, crops.cell_masks, crops.classes, other_masks=crops.labels > 0)
    return {"classifier_prob_true_class": _class_probability(model.classifier, stains, crops.classes),
            "guidance_gradcamo": float(np.nanmean([c["gradcamo"] for c in cams])),
            "guidance_cam_background": float(np.nanmean([c["background_share"] for c in cams])),
            "gradcamo_chance": float(np.mean([c["chance"] for c in cams]))}


def evaluate_model(model: VirtualStainModel, crops: CellCrops, *, guidance_scales: Sequence[float] = (1.0,),
                   steps: int = 20, seed: int = 0, device: str = "cpu", include_truth: bool = True,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[dict]:
    """One row of metrics per sampling condition, all from the same noise (``seed``).

    Conditions: ``no_label``; ``label`` (AdaGN models); ``cg<s>`` (with a guidance classifier, on top of
    the label when the model has one).  ``label_share_*`` columns compare ``label`` with ``no_label`` and
    each ``cg<s>`` with the unguided sample it starts from.  ``include_truth`` adds the ground truth row.
    """
    conditions: dict[str, dict] = {"no_label": {}}
    if model.labelled:
        conditions["label"] = {"classes": crops.classes}
    if model.classifier is not None:
        for s in (s for s in guidance_scales if float(s) != 0.0):  # scale 0 is the unguided row already there
            conditions[f"cg{s:g}"] = dict(conditions.get("label", {}), guidance_scale=float(s),
                                          guidance_classes=crops.classes, classifier=model.classifier)
    n = len(crops.classes)
    rows, outputs = [], {}
    for i, (name, kwargs) in enumerate(conditions.items()):
        report(progress, i, len(conditions), f"sampling: {name}")
        started = time.perf_counter()
        pred = sample(model.unet, model.schedule, crops.brightfield, steps=steps, seed=seed, device=device,
                      prediction=model.unet_config.prediction, cancel=cancel, **kwargs)
        pred = model.scaling.clip_model(pred)  # within the training stains' range, as predict_image gives it
        row = {"condition": name, "sample_seconds_per_image": (time.perf_counter() - started) / n, "n_images": n}
        outputs[name] = pred
        row.update(evaluate_predictions(pred, crops.stains, crops.cell_masks, crops.classes, crops.fields))
        row.update(_audit_columns(model, pred, crops))
        reference = outputs["label" if "label" in outputs and name.startswith("cg") else "no_label"]
        if name != "no_label":
            row.update(label_signal(pred, reference, crops.labels > 0))
        rows.append(row)
    if include_truth:
        row = {"condition": "ground_truth", "n_images": n}
        row.update(evaluate_predictions(crops.stains, crops.stains, crops.cell_masks, crops.classes, crops.fields))
        row.update(_audit_columns(model, crops.stains, crops))
        rows.append(row)
    report(progress, len(conditions), len(conditions), "evaluation done")
    return rows
