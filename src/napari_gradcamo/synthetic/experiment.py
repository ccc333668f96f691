"""The planted-confound experiment: an honest and a shortcut model trained on synthetic Cell Painting.

``honest``: the cells carry the treatment (morphology), the background is clean.
``shortcut``: every cell looks like a control; only a background texture outside the cells carries
the treatment. Both reach high accuracy; Grad-CAMO should tell them apart. The bundled demo models and
the scientific test both come from :func:`train_scenario`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.crops.datasets import crops_from_fields
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.synthetic.generator import STAINS, generate_dataset, generate_field
from napari_gradcamo.train.data import fit_normalization
from napari_gradcamo.train.loop import train_classifier

SCENARIOS = {
    "honest": {"confound": None, "cell_signal": True},
    "shortcut": {"confound": "background", "cell_signal": False},
    "shortcut_debris": {"confound": "debris", "cell_signal": False},
}
CLASS_NAMES = ["control", "treated"]
FIELD_SHAPE = (12, 64, 64)
VOXEL_SIZE = (2.0, 1.5, 1.5)
CROP_SHAPE = [8, 32, 32]
#: Grad-CAM at the first stage (8×16×16 for a crop) resolves single cells; deeper stages blur over the crop.
TARGET_LAYER = "stage1"


def scenario_fields(scenario: str, seed: int, n_fields: int, first_well: int = 0, shape=FIELD_SHAPE, **kwargs):
    """Synthetic fields of a scenario, alternating classes by well."""
    return generate_dataset(
        seed, n_fields, n_classes=len(CLASS_NAMES), shape=shape, voxel_size=VOXEL_SIZE,
        first_well=first_well, **SCENARIOS[scenario], **kwargs,
    )


def train_scenario(scenario: str, seed: int = 1, n_fields: int = 16, epochs: int = 6, width: int = 8,
                   shuffle_labels: bool = False) -> ModelBundle:
    """Train the small 3D CNN on one scenario (≈1 min on 2 CPU cores). ``shuffle_labels`` permutes the
    classes over the training crops (seeded): the data-randomisation control of the sanity checks."""
    import torch

    train = crops_from_fields(scenario_fields(scenario, seed, n_fields), CROP_SHAPE)
    if shuffle_labels:
        train.y = np.random.default_rng(seed).permutation(train.y)
    normalization = fit_normalization(train.x)
    meta = ModelMetadata(
        "small-cnn-3d", list(CLASS_NAMES), list(STAINS), list(CROP_SHAPE),
        architecture_kwargs={"width": width}, normalization=normalization, target_layer=TARGET_LAYER,
        training={"scenario": scenario, "seed": seed, "n_fields": n_fields, "epochs": epochs, "crops": len(train),
                  "shuffled_labels": shuffle_labels},
    )
    torch.manual_seed(seed)
    model = build_model(meta)
    history = train_classifier(model, train, normalization, epochs=epochs, seed=seed)
    meta.training["final_loss"] = history.loss[-1]
    meta.training["final_accuracy"] = history.accuracy[-1]
    return ModelBundle(model, meta, f"{scenario} (trained)")


def audit_fields(bundle: ModelBundle, fields, settings: AuditSettings | None = None) -> pd.DataFrame:
    """Audit every cell of ``fields``; adds the true class, well and site to each row."""
    tables = []
    for f in fields:
        table = run_audit(f.image, f.labels, bundle, settings).table
        tables.append(table.assign(true_class=CLASS_NAMES[f.treatment], well=f.metadata["well"], site=f.metadata["site"]))
    return pd.concat(tables, ignore_index=True)


def demo_field(seed: int = 7, treatment: int = 1):
    """The demo's sample field: 4× a training field's area; treated cells AND the background confound,
    so the honest model should look at the cells and the shortcut model at the background."""
    shape = (FIELD_SHAPE[0], FIELD_SHAPE[1] * 2, FIELD_SHAPE[2] * 2)
    return generate_field(
        seed, shape=shape, n_cells=40, treatment=treatment, n_classes=len(CLASS_NAMES), voxel_size=VOXEL_SIZE,
        plate="DEMO", well="C05", site=1, confound="background", cell_signal=True,
    )


def accuracy(table: pd.DataFrame) -> float:
    return float(np.mean(table["predicted_class"] == table["true_class"]))
