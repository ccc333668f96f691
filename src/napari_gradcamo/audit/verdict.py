"""The verdict a user acts on: does this model look at the cells? One answer per model and per class.

Evidence, on a sample of cells (docs/interpreting-scores.md, "The verdict"):

1. **Is there anything to judge?** A model whose predictions carry no information (accuracy no better than
   always answering the majority class, when the true classes are known; or probabilities that stay within
   :data:`UNIFORM_MARGIN` of 1/K for nearly every cell) is reported as such, and no attention is judged.
2. **The causal check decides.** Each sampled cell is classified four times more: its cell hidden, and
   the medium hidden — every voxel that belongs to no cell; the neighbouring cells stay, since a field's
   cells share its condition and an honest model may read them too (:mod:`~napari_gradcamo.audit.occlusion`)
   — each filled once with the crop's
   own background level and once with the pooled background level of all sampled crops
   (:func:`pooled_background`); each drop is the larger of its two fills (a cue carried by the medium's
   *level* survives a fill with that same level; across fields of several conditions the pooled level
   removes it). Per cell, ``causal = |drop(cell hidden)| −
   |drop(medium hidden)|``, in −1..1: how much more the answer depends on the cell than on the medium,
   in either direction (hiding a dim cell can *raise* the probability of a class recognised by dimness).
   Per class: when hiding either barely changes the class's probability (the mean of the larger
   |drop| < :data:`MIN_DROP`), the class is *not assessable* — it is recognised by what
   is missing (a class marked by the absence of a feature), or the answer is saturated, and neither occlusion
   nor Grad-CAM has positive evidence to place. Otherwise the mean causal score and its bootstrap interval
   over cells (:data:`CONFIDENCE`) decide: interval above 0 and mean ≥ :data:`MIN_DROP` → *looks at the
   cells*; interval below 0 and mean ≤ −:data:`MIN_DROP` → *looks elsewhere*; else *inconclusive*.
   The model: any class elsewhere → elsewhere; else any class at the cells → at the cells.
3. **Grad-CAM says where, at a layer chosen by the data.** Every candidate layer is explained in the same
   one-pass sweep (:class:`~napari_gradcamo.audit.layer_sweep.MultiLayerCam`); the layer whose per-cell
   normalised Grad-CAMO agrees best with the per-cell causal score (Spearman over the sampled cells) is the
   layer reported, with each class's median and bootstrap interval there. When Grad-CAM at that layer
   contradicts the causal check, the verdict follows the causal check and says so.

Nothing here is tuned to the project's synthetic generator: the thresholds are statements about
probabilities (a drop of 0.05) and intervals, not fitted values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

LOOKS_AT_CELLS = "looks at the cells"
LOOKS_ELSEWHERE = "looks elsewhere"
INCONCLUSIVE = "inconclusive"
NOT_ASSESSABLE = "not assessable"
VERDICTS = (LOOKS_AT_CELLS, LOOKS_ELSEWHERE, INCONCLUSIVE, NOT_ASSESSABLE)

#: A class whose probability drops by less than this on average, whichever part is hidden, is not assessable.
MIN_DROP = 0.05
#: Fewer sampled cells of a class than this: not assessable.
MIN_CELLS = 5
#: Two-sided confidence of the bootstrap intervals.
CONFIDENCE = 0.95
BOOTSTRAP = 2000
#: Probabilities within this of 1/K for ≥ 90 % of the cells: the predictions carry no information.
UNIFORM_MARGIN = 0.05
#: Cells sampled per model by default.
SAMPLE = 48


@dataclass
class ClassVerdict:
    """One class's verdict with its evidence (intervals are (low, high) bootstrap percentiles)."""

    class_name: str
    verdict: str
    reason: str
    cells: int
    causal_mean: float = math.nan
    causal_interval: tuple[float, float] = (math.nan, math.nan)
    drop_cell_median: float = math.nan
    drop_context_median: float = math.nan
    gradcam_median: float = math.nan
    gradcam_interval: tuple[float, float] = (math.nan, math.nan)
    gradcam_agrees: bool | None = None

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class VerdictReport:
    """The model's verdict, per class, the layer the Grad-CAM evidence is read at, and the per-cell table.

    ``cells``: one row per sampled cell: ``image``, ``label``, ``target_class``, ``predicted_class``,
    ``drop_cell_occluded`` (the cell hidden), ``drop_context_occluded`` (here: the medium hidden, neighbouring
    cells kept), ``causal``, ``normalised@<layer>`` for every layer,
    ``score`` (normalised Grad-CAMO at :attr:`layer`) and ``flagged`` (score below 0, i.e. below chance).

    Attributes
    ----------
    verdict : str
        One of :data:`VERDICTS` for the model.
    classes : dict of str to ClassVerdict
        Each class's verdict, reason and evidence.
    layer : str
        The layer the Grad-CAM evidence is read at.
    layer_agreement : dict of str to float
        Each candidate layer's Spearman correlation with the causal score.
    informative : bool
        False when the predictions carry no information (then nothing is judged).
    notes : list of str
    cells : DataFrame

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from napari_gradcamo.audit.verdict import judge_table
    >>> cells = pd.DataFrame({"label": range(1, 11), "target_class": "b", "predicted_class": "b",
    ...                       "probability": 0.9, "drop_cell_occluded": 0.8, "drop_context_occluded": 0.0,
    ...                       "normalised@stage1": np.linspace(-0.2, 0.6, 10)})
    >>> report = judge_table(cells, ["stage1"], ["a", "b"])
    >>> report.verdict, report.classes["b"].verdict
    ('looks at the cells', 'looks at the cells')
    """

    verdict: str
    classes: dict[str, ClassVerdict]
    layer: str
    layer_agreement: dict[str, float]
    informative: bool
    notes: list[str] = field(default_factory=list)
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary_line(self) -> str:
        per_class = "; ".join(f"{c}: {v.verdict}" + (f" (causal {v.causal_mean:+.2f}, {CONFIDENCE:.0%} "
                                                     f"{v.causal_interval[0]:+.2f}..{v.causal_interval[1]:+.2f})"
                                                     if np.isfinite(v.causal_mean) else f" ({v.reason})")
                              for c, v in self.classes.items())
        return f"verdict: {self.verdict} — {per_class}; Grad-CAM read at {self.layer or 'no layer'}"

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "classes": {c: v.as_dict() for c, v in self.classes.items()},
                "layer": self.layer, "layer_agreement": self.layer_agreement, "informative": self.informative,
                "notes": list(self.notes), "cells": int(len(self.cells)),
                "flagged": int(self.cells["flagged"].sum()) if "flagged" in self.cells else 0,
                "rule": {"min_drop": MIN_DROP, "min_cells": MIN_CELLS, "confidence": CONFIDENCE,
                         "bootstrap": BOOTSTRAP, "uniform_margin": UNIFORM_MARGIN}}


def bootstrap_interval(values: Sequence[float], statistic=np.mean, seed: int = 0, n: int = BOOTSTRAP,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (NaN, NaN for fewer than 2 values)."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = statistic(values[rng.integers(0, len(values), (n, len(values)))], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    return (float(np.percentile(draws, tail)), float(np.percentile(draws, 100.0 - tail)))


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < MIN_CELLS or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def informative(cells: pd.DataFrame, class_names: Sequence[str], true_classes: Sequence[str] | None = None
                ) -> tuple[bool, str]:
    """Whether the model's predictions on these cells carry information, and why not.

    With ``true_classes`` (one per row of ``cells``): the accuracy must beat always answering the most
    frequent true class (one-sided binomial test at 1 %). Without: the explained class's probability must
    leave 1/K ± :data:`UNIFORM_MARGIN` for more than 10 % of the cells.
    """
    from scipy.stats import binomtest

    k = len(class_names)
    if true_classes is not None:
        truth = pd.Series(list(true_classes), index=cells.index, dtype=object)
        correct = int((cells["predicted_class"] == truth).sum())
        majority = float(truth.value_counts(normalize=True).max())
        if len(truth) and binomtest(correct, len(truth), majority, alternative="greater").pvalue >= 0.01:
            predicted = cells["predicted_class"].value_counts()
            one = f"; it predicts '{predicted.index[0]}' for every cell" if len(predicted) == 1 else ""
            return False, (f"the model is at chance on these cells: accuracy {correct / len(truth):.2f} vs "
                           f"{majority:.2f} by always answering the most frequent class{one}")
    p = cells["probability"].to_numpy(dtype=np.float64)
    if len(p) and np.mean(np.abs(p - 1.0 / k) < UNIFORM_MARGIN) >= 0.9:
        return False, (f"the predictions carry no information: the predicted class's probability stays within "
                       f"{UNIFORM_MARGIN} of 1/{k} for {np.mean(np.abs(p - 1.0 / k) < UNIFORM_MARGIN):.0%} of the cells")
    return True, ""


def judge_class(name: str, cells: pd.DataFrame, layer: str | None, seed: int = 0) -> ClassVerdict:
    """The rule for one class on its sampled cells (module docstring, step 2 and 3)."""
    drops = cells[["drop_cell_occluded", "drop_context_occluded"]].to_numpy(dtype=np.float64)
    ok = np.isfinite(drops).all(axis=1)
    drops, n = drops[ok], int(ok.sum())
    score = cells["score"].to_numpy(dtype=np.float64)[ok] if "score" in cells else np.full(n, np.nan)
    g_med = float(np.nanmedian(score)) if np.isfinite(score).any() else math.nan
    g_int = bootstrap_interval(score, np.median, seed) if layer else (math.nan, math.nan)
    base = dict(cells=n, gradcam_median=g_med, gradcam_interval=g_int)
    if n < MIN_CELLS:
        return ClassVerdict(name, NOT_ASSESSABLE, f"only {n} sampled cell(s) of this class (need {MIN_CELLS})",
                            **base)
    sensitivity = np.abs(drops)  # either direction: hiding a dim cell can *raise* a dim class's probability
    largest = float(np.mean(sensitivity.max(axis=1)))
    medians = dict(drop_cell_median=float(np.median(drops[:, 0])), drop_context_median=float(np.median(drops[:, 1])))
    if largest < MIN_DROP:
        return ClassVerdict(name, NOT_ASSESSABLE,
                            f"hiding the cell or the medium around it barely changes p({name}) (mean larger |drop| "
                            f"{largest:.3f} < {MIN_DROP}): the class is recognised by what is missing, or the answer "
                            "is saturated; there is no positive evidence to locate", **base, **medians)
    causal = sensitivity[:, 0] - sensitivity[:, 1]
    mean = float(np.mean(causal))
    low, high = bootstrap_interval(causal, np.mean, seed)
    if low > 0 and mean >= MIN_DROP:
        verdict, reason = LOOKS_AT_CELLS, "the answer depends more on the cell than on the medium around it"
    elif high < 0 and mean <= -MIN_DROP:
        verdict, reason = LOOKS_ELSEWHERE, "the answer depends more on the medium around the cell than on the cell"
    else:
        verdict, reason = INCONCLUSIVE, (f"the causal score's interval contains 0 or its mean is within ±{MIN_DROP} "
                                         "(cell and medium matter about equally)")
    agrees = None
    if np.isfinite(g_int[0]) and verdict != INCONCLUSIVE:
        agrees = bool(g_int[0] > 0) if verdict == LOOKS_AT_CELLS else bool(g_int[1] < 0)
        if not agrees:
            reason += f"; Grad-CAM at {layer} does not show it (median normalised {g_med:+.2f}): the causal check decides"
    return ClassVerdict(name, verdict, reason, causal_mean=mean, causal_interval=(low, high), gradcam_agrees=agrees,
                        **base, **medians)


def model_verdict(classes: dict[str, ClassVerdict]) -> str:
    """Any class elsewhere → elsewhere; else any class at the cells → at the cells (a class recognised by what
    its cells lack is often inconclusive or not assessable while the class with positive evidence decides);
    no assessable class → not assessable; otherwise inconclusive."""
    found = [v.verdict for v in classes.values() if v.verdict != NOT_ASSESSABLE]
    if not found:
        return NOT_ASSESSABLE
    if LOOKS_ELSEWHERE in found:
        return LOOKS_ELSEWHERE
    return LOOKS_AT_CELLS if LOOKS_AT_CELLS in found else INCONCLUSIVE


def judge_table(cells: pd.DataFrame, layers: Sequence[str], class_names: Sequence[str],
                true_classes: Sequence[str] | None = None, seed: int = 0) -> VerdictReport:
    """The verdict from a per-cell table of sampled cells (columns as :class:`VerdictReport`'s ``cells``,
    without ``causal``, ``score`` and ``flagged``, which are added here)."""
    cells = cells.reset_index(drop=True).copy()
    cells["causal"] = cells["drop_cell_occluded"].abs() - cells["drop_context_occluded"].abs()
    agreement = {name: _spearman(cells[f"normalised@{name}"], cells["causal"]) for name in layers}
    usable = {n: r for n, r in agreement.items() if np.isfinite(r)}
    notes = []
    if usable:
        layer = max(usable, key=usable.get)
        cells["score"] = cells[f"normalised@{layer}"]
    elif len(layers) == 1:
        layer = layers[0]
        cells["score"] = cells[f"normalised@{layer}"]
    elif layers:
        layer = "mean over layers"
        cells["score"] = cells[[f"normalised@{n}" for n in layers]].mean(axis=1)
        notes.append("no layer's scores vary with the causal score over these cells: Grad-CAM is read as the "
                     "mean over the candidate layers")
    else:
        layer = ""
        cells["score"] = np.nan
    cells["flagged"] = cells["score"] < 0
    ok, why = informative(cells, class_names, true_classes)
    classes = {}
    for name in class_names:
        mine = cells[cells["target_class"] == name]
        if not ok:
            classes[name] = ClassVerdict(name, NOT_ASSESSABLE, why, int(len(mine)))
        elif len(mine):
            classes[name] = judge_class(name, mine, layer, seed)
    if not ok:
        notes.insert(0, why)
        cells["flagged"] = False
    verdict = model_verdict(classes) if ok else NOT_ASSESSABLE
    return VerdictReport(verdict, classes, layer, {k: float(v) for k, v in agreement.items()}, ok, notes, cells)


def judge_fields(bundle, fields: Iterable[tuple], *, true_classes: Sequence[Sequence[str]] | None = None,
                 sample: int = SAMPLE, seed: int = 0, settings=None, layers: Sequence[str] | None = None,
                 cancel=None) -> VerdictReport:
    """The verdict of ``bundle`` on ``fields`` (pairs of :class:`~napari_gradcamo.io.images.Image` and label
    image): up to ``sample`` cells drawn at random (seeded) over all fields, explained at every candidate
    layer in one pass each batch, with both occlusions.

    ``true_classes``: per field, the true class name of each of its cells in label order (or one name per
    field repeated), used only to tell a model at chance.

    Parameters
    ----------
    bundle : ModelBundle
        The model and its metadata (``load_checkpoint``).
    fields : iterable of (Image, ndarray)
        Images and their label images.
    true_classes : list of list of str, optional
        Per field, the true class of each cell in label order (or one name for the whole field).
    sample : int
        Cells drawn at random (seeded) over all fields.
    seed : int
        Seed of the sample and of the bootstrap.
    settings : AuditSettings, optional
        Method, batch size, device, channel map (the layer is chosen by the rule; occlusion always runs).
    layers : list of str, optional
        Candidate layers (default :func:`~napari_gradcamo.audit.layer_sweep.candidate_layers`).
    cancel : CancelToken, optional
        Stops between batches.

    Returns
    -------
    VerdictReport

    Examples
    --------
    >>> import numpy as np, torch
    >>> from napari_gradcamo import Image, judge, judge_fields
    >>> from napari_gradcamo.audit.verdict import VERDICTS
    >>> from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    >>> meta = ModelMetadata("custom", ["a", "b"], ["c0"], [2, 16, 16], normalization={"method": "none"},
    ...                      architecture_kwargs={"factory": "my_lab.nets:build"})
    >>> labels = np.zeros((2, 32, 32), np.uint32); labels[:, 4:12, 4:12] = 1; labels[:, 18:26, 18:26] = 2
    >>> image = Image(np.random.default_rng(0).random((1, 2, 32, 32), dtype=np.float32), ["c0"], (1.0, 1.0, 1.0))
    >>> report = judge_fields(ModelBundle(net, meta), [(image, labels)])
    >>> report.verdict in VERDICTS, len(report.cells)
    (True, 2)
    """
    from napari_gradcamo.audit.layer_sweep import candidate_layers, run_sweep
    from napari_gradcamo.audit.run import AuditSettings
    from napari_gradcamo.crops.extract import cell_table

    fields = list(fields)
    meta = bundle.metadata
    base = settings or AuditSettings()
    settings = AuditSettings(**{**asdict(base), "occlusion": True, "target_layer": None})
    if layers is None:
        layers = candidate_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
    if not layers:
        raise ValueError("The model has no layer whose feature map still has rows and columns: nothing to explain.")
    ids = [[c.label for c in cell_table(np.asarray(labels))] for _, labels in fields]
    pool = [(i, label) for i, labels in enumerate(ids) for label in labels]
    rng = np.random.default_rng(seed)
    chosen = pool if len(pool) <= sample else [pool[j] for j in sorted(rng.choice(len(pool), sample, replace=False))]
    pooled = pooled_background(bundle, fields, chosen, settings)
    parts, truth = [], []
    for i, (image, labels) in enumerate(fields):
        wanted = [label for f, label in chosen if f == i]
        if not wanted:
            continue
        tables = run_sweep(image, labels, bundle, layers, settings, cancel=cancel, only_labels=wanted,
                           reference_levels=pooled)
        first = tables[layers[0]]
        part = first[["label", "target_class", "predicted_class", "probability"]].assign(
            image=getattr(image, "source", str(i)) or str(i), field=i)
        for what, column in (("cell", "drop_cell_occluded"), ("medium", "drop_context_occluded")):
            # the larger effect of the two neutral fills; "context" here is the medium (neighbours stay)
            both = first[[f"drop_{what}_occluded", f"drop_{what}_reference"]].to_numpy(dtype=np.float64)
            pick = np.argmax(np.abs(np.nan_to_num(both, nan=-1.0)), axis=1)
            part[column] = both[np.arange(len(both)), pick]
            part[f"drop_{what}_background_fill"] = both[:, 0]
            part[f"drop_{what}_pooled_fill"] = both[:, 1]
        for name in layers:
            part[f"normalised@{name}"] = tables[name]["normalised"].to_numpy()
        parts.append(part)
        if true_classes is not None:
            known = list(true_classes[i])
            order = ids[i]
            lookup = dict(zip(order, known)) if len(known) == len(order) else {l: known[0] for l in order}
            truth.extend(lookup[int(l)] for l in part["label"])
    cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["label", "target_class", "predicted_class", "probability", "drop_cell_occluded",
                 "drop_context_occluded", *[f"normalised@{n}" for n in layers]])
    return judge_table(cells, layers, meta.class_names, truth if true_classes is not None else None, seed)


def pooled_background(bundle, fields, chosen, settings) -> np.ndarray:
    """Per model channel, the median over the sampled crops of each crop's background level: a medium level
    typical of the data (in-distribution) that no single crop decides. With fields from several conditions
    it removes a condition-specific medium level that a fill with the crop's own level keeps."""
    from napari_gradcamo.audit.layer_sweep import sweep_crop_shape
    from napari_gradcamo.audit.occlusion import background_levels
    from napari_gradcamo.audit.run import prepare
    from napari_gradcamo.crops.extract import extract_crop

    levels = []
    for i, (image, labels) in enumerate(fields):
        wanted = {label for f, label in chosen if f == i}
        if not wanted:
            continue
        model_image, _, cells = prepare(image, labels, bundle, settings)
        shape = sweep_crop_shape(bundle, settings, model_image)  # cut as the audit cuts it
        crops = [extract_crop(model_image, labels, c, shape) for c in cells if c.label in wanted]
        levels.append(background_levels(np.stack([c.image for c in crops]), np.stack([c.cell_mask for c in crops]),
                                        np.stack([c.other_mask for c in crops])))
    return np.median(np.concatenate(levels), axis=0)


def judge(image, labels, bundle, **kwargs) -> VerdictReport:
    """:func:`judge_fields` on one image and its label image.

    Parameters
    ----------
    image : Image
        The image (channels named as the model's, or mapped with ``settings.channel_map``).
    labels : ndarray
        Its label image, one id per cell.
    bundle : ModelBundle
        The model and its metadata.
    **kwargs
        As :func:`judge_fields` (``sample``, ``seed``, ``settings``, ``layers``, ``true_classes``, ``cancel``).

    Returns
    -------
    VerdictReport

    Examples
    --------
    >>> import numpy as np, torch
    >>> from napari_gradcamo import Image, judge, judge_fields
    >>> from napari_gradcamo.audit.verdict import VERDICTS
    >>> from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    >>> meta = ModelMetadata("custom", ["a", "b"], ["c0"], [2, 16, 16], normalization={"method": "none"},
    ...                      architecture_kwargs={"factory": "my_lab.nets:build"})
    >>> labels = np.zeros((2, 32, 32), np.uint32); labels[:, 4:12, 4:12] = 1; labels[:, 18:26, 18:26] = 2
    >>> image = Image(np.random.default_rng(0).random((1, 2, 32, 32), dtype=np.float32), ["c0"], (1.0, 1.0, 1.0))
    >>> report = judge(image, labels, ModelBundle(net, meta))
    >>> report.verdict in VERDICTS, len(report.cells)
    (True, 2)
    """
    return judge_fields(bundle, [(image, labels)], **kwargs)


def separation(honest: pd.DataFrame, shortcut: pd.DataFrame) -> dict[str, float]:
    """P(an honest model's cell scores above a shortcut model's cell), ties counting ½, for the causal score
    and for the Grad-CAM score at each model's chosen layer (``cells`` tables of two reports)."""
    def auc(a, b) -> float:
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if not len(a) or not len(b):
            return math.nan
        return float(((a[:, None] > b[None]).sum() + 0.5 * (a[:, None] == b[None]).sum()) / (len(a) * len(b)))

    return {"occlusion": auc(honest["causal"], shortcut["causal"]), "gradcam": auc(honest["score"], shortcut["score"])}
