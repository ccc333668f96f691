"""Does the map reflect the model? Cascading randomisation (Adebayo et al., "Sanity checks for saliency
maps", NeurIPS 2018; Quantus' model-parameter-randomisation test).

The model's top-level layers are randomised one after the other from the output down (cumulatively, so
the last step randomises every weight). Each parameter is redrawn from a normal distribution with the
mean and standard deviation of the trained tensor (scale kept, learned structure gone); batch-norm running
statistics are kept. After each step the same cells are explained again (same target classes) and
compared with the trained model's maps: Spearman rank correlation on the crop grid per cell, and the
change in Grad-CAMO. A map that barely changes when the weights it should depend on are random describes
the image, not the model: the report then warns.

One random draw is not enough: on the synthetic honest models the median correlation after randomising
every weight was 0.67 in one draw and 0.07 in the next (docs/interpreting-scores.md), so every step is
repeated for :data:`DRAWS` independent draws and judged by the median over draws.

:func:`compare_models` is the data-randomisation test of the same paper: the maps of a model trained on
the real labels against those of the same architecture trained on shuffled labels.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from napari_gradcamo.audit.batch import BatchCrops, score_batch
from napari_gradcamo.audit.cam import CamEngine, upsample

#: A randomisation step whose median rank correlation with the trained maps stays at or above this
#: means the maps barely changed: the check warns.
MAX_CORRELATION = 0.5
#: Independent random draws per randomisation step.
DRAWS = 5


@dataclass
class SanityStep:
    """One randomisation step: which layers are random, and how far the maps moved."""

    randomised: list[str]
    median_spearman: float  # the median over draws of each draw's median over cells
    spearman: list[float]  # per cell: the median over draws
    median_gradcamo: float
    median_gradcamo_change: float
    draw_spearman: list[float] = field(default_factory=list)  # each draw's median over cells

    @property
    def barely_changed(self) -> bool:
        return bool(np.isfinite(self.median_spearman) and self.median_spearman >= MAX_CORRELATION)


@dataclass
class SanityReport:
    """The trained model's median Grad-CAMO and every randomisation step, with the warnings."""

    layer: str
    cells: int
    median_gradcamo: float
    steps: list[SanityStep] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [f"maps barely change with {', '.join(s.randomised)} randomised (median Spearman "
                f"{s.median_spearman:.2f} ≥ {MAX_CORRELATION}): they may describe the image, not the model"
                for s in self.steps if s.barely_changed]

    @property
    def passed(self) -> bool:
        """True when the maps with every weight random no longer resemble the trained model's."""
        return bool(self.steps) and not self.steps[-1].barely_changed

    def as_dict(self) -> dict:
        steps = [{k: v for k, v in asdict(s).items() if k != "spearman"} for s in self.steps]
        return {"layer": self.layer, "cells": self.cells, "median_gradcamo": self.median_gradcamo,
                "steps": steps, "passed": self.passed, "warnings": self.warnings}


def randomisation_order(model) -> list[str]:
    """Top-level modules that own weights, from the output back to the input."""
    return [name for name, module in model.named_children() if any(True for _ in module.parameters())][::-1]


def randomise_(module, generator) -> None:
    """Redraw every parameter of ``module`` in place from N(mean, std) of its current values."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            std = float(p.std()) if p.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
            p.copy_(noise * (std or 1.0) + float(p.mean()))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _explain(model, crops: BatchCrops, normalization: dict, layer: str, method: str, targets, device,
             head: str = "softmax"):
    with CamEngine(model, layer, method, device, head=head) as engine:
        batch = score_batch(engine, crops, normalization, targets)
    return batch, upsample(batch.raw_maps, crops.images.shape[2:])


def cascading_randomisation(model, crops: BatchCrops, normalization: dict, layer: str, method: str = "gradcam",
                            targets: Sequence[int] | None = None, seed: int = 0, device=None,
                            draws: int = DRAWS, head: str = "softmax") -> SanityReport:
    """Explain ``crops`` with ``model`` and with ever more of its top layers randomised (on copies), ``draws``
    independent times; ``head`` says how the model's outputs become probabilities and explained scalars."""
    import torch

    trained, grid = _explain(model, crops, normalization, layer, method, targets, device, head)
    targets = [int(t) for t in trained.targets]
    base_scores = np.array([s.gradcamo for s in trained.scores])
    report = SanityReport(layer, len(base_scores), _nanmedian(base_scores) if len(base_scores) else np.nan)
    order = randomisation_order(model)
    rho = np.full((draws, len(order), len(targets)), np.nan)
    scores = np.full((draws, len(order), len(targets)), np.nan)
    for draw in range(draws):
        randomised = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(int(seed) * 1000 + draw)
        for step, name in enumerate(order):
            randomise_(randomised.get_submodule(name), generator)
            after, after_grid = _explain(randomised, crops, normalization, layer, method, targets, device, head)
            rho[draw, step] = [_spearman(a, b) for a, b in zip(grid, after_grid)]
            scores[draw, step] = [s.gradcamo for s in after.scores]
    for step in range(len(order)):
        per_draw = [_nanmedian(r) for r in rho[:, step]]
        report.steps.append(SanityStep(
            order[: step + 1], _nanmedian(per_draw), [_nanmedian(c) for c in rho[:, step].T],
            _nanmedian(scores[:, step]), _nanmedian(scores[:, step] - base_scores), per_draw))
    return report


def compare_models(model, other, crops: BatchCrops, normalization: dict, layer: str, method: str = "gradcam",
                   device=None, head: str = "softmax") -> list[float]:
    """Per cell, the Spearman correlation between ``model``'s maps and ``other``'s for ``model``'s predicted
    classes (e.g. ``other`` trained on shuffled labels: maps that reflect learning should differ)."""
    first, grid = _explain(model, crops, normalization, layer, method, None, device, head)
    _, other_grid = _explain(other, crops, normalization, layer, method, [int(t) for t in first.targets], device,
                             head)
    return [_spearman(a, b) for a, b in zip(grid, other_grid)]


def _nanmedian(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


#: Cells :func:`check_image` explains at most (spread over the image's cells).
MAX_CELLS = 32


def check_image(image, labels: np.ndarray, bundle, settings=None, max_cells: int = MAX_CELLS, seed: int = 0
                ) -> SanityReport:
    """:func:`cascading_randomisation` on up to ``max_cells`` cells of an image, as the audit would explain them."""
    from napari_gradcamo.audit.batch import batch_of
    from napari_gradcamo.audit.run import AuditSettings, prepare, resolve_target_class
    from napari_gradcamo.crops.extract import extract_crop

    settings = settings or AuditSettings()
    meta = bundle.metadata
    model_image, layer, cells = prepare(image, labels, bundle, settings)
    if not cells:
        raise ValueError("The label image holds no cells to run the sanity check on.")
    cells = [cells[i] for i in np.unique(np.linspace(0, len(cells) - 1, min(len(cells), max_cells)).astype(int))]
    crops = batch_of([extract_crop(model_image, labels, c, meta.crop_shape) for c in cells])
    target = resolve_target_class(settings.target_class, meta.class_names)
    targets = None if target is None else [target] * len(cells)
    return cascading_randomisation(bundle.model, crops, meta.normalization, layer, settings.method, targets, seed,
                                   settings.device, head=meta.head)
