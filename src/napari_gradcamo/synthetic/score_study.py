"""What the scores say on the planted-confound experiment: per layer, honest vs shortcut models.

Used by ``scripts/score_experiment.py`` (the numbers in docs/interpreting-scores.md) and the science tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_gradcamo.audit.layer_sweep import choose_layer, run_sweep
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.crops.datasets import crops_from_fields
from napari_gradcamo.synthetic.experiment import CLASS_NAMES, scenario_fields

#: The two confounds and the scenario each shortcut model is trained on.
CONFOUND_SCENARIOS = {"stripes": "shortcut", "debris": "shortcut_debris"}


def held_out_fields(scenario: str, seed: int, n_fields: int = 8):
    """Fields from wells never used in training (first well 20), a different generator seed."""
    return scenario_fields(scenario, seed=seed + 1000, n_fields=n_fields, first_well=20)


def layer_tables(bundle, fields, layers=None, settings: AuditSettings | None = None) -> dict[str, pd.DataFrame]:
    """Every cell of ``fields`` at every layer (one pass per batch), with true class and well per row."""
    parts: dict[str, list] = {}
    for f in fields:
        for name, table in run_sweep(f.image, f.labels, bundle, layers, settings).items():
            parts.setdefault(name, []).append(
                table.assign(true_class=CLASS_NAMES[f.treatment], well=f.metadata["well"]))
    return {name: pd.concat(t, ignore_index=True) for name, t in parts.items()}


def occlusion_table(bundle, fields, layer: str) -> pd.DataFrame:
    """The audit at ``layer`` with the occlusion drops."""
    settings = AuditSettings(target_layer=layer, occlusion=True)
    return pd.concat([run_audit(f.image, f.labels, bundle, settings).table for f in fields], ignore_index=True)


def separation_auc(honest: np.ndarray, shortcut: np.ndarray) -> float:
    """P(a random honest cell scores above a random shortcut cell), ties counted half (Mann–Whitney AUC)."""
    h = np.asarray(honest, float)[np.isfinite(honest)]
    s = np.asarray(shortcut, float)[np.isfinite(shortcut)]
    if not len(h) or not len(s):
        return float("nan")
    greater = (h[:, None] > s[None, :]).mean()
    ties = (h[:, None] == s[None, :]).mean()
    return float(greater + 0.5 * ties)


def rule_layer(bundle, scenario: str, seed: int, n_fields: int = 4) -> tuple[str, dict]:
    """:func:`~napari_gradcamo.audit.layer_sweep.choose_layer` on validation fields of the scenario
    (wells 40.., unseen in training and in the held-out audit)."""
    meta = bundle.metadata
    val = crops_from_fields(scenario_fields(scenario, seed=seed + 2000, n_fields=n_fields, first_well=40),
                            meta.crop_shape)
    return choose_layer(bundle.model, val.x, val.masks, val.y, meta.normalization, meta.crop_shape)
