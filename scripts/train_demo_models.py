"""Train the bundled demo models on synthetic data and report their audit.

``honest`` and ``shortcut`` (5 stains) come from :func:`napari_gradcamo.synthetic.experiment.train_scenario`;
``nucleus`` is the honest scenario seen through its DNA stain only (1 channel), so that a one-channel
nucleus image such as the cells3d sample can be audited out of the box.

Usage: python scripts/train_demo_models.py [OUT_DIR] [--only NAME]   (≈3–4 min on 2 CPU cores; seeded)
"""

import argparse
import json
from pathlib import Path

import torch

from napari_gradcamo.crops.datasets import CropSet, crops_from_fields
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.checkpoint import save_checkpoint
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.output import results
from napari_gradcamo.synthetic.experiment import (
    CLASS_NAMES,
    CROP_SHAPE,
    SCENARIOS,
    TARGET_LAYER,
    accuracy,
    audit_fields,
    scenario_fields,
    train_scenario,
)
from napari_gradcamo.train.loop import fit_normalization, train_classifier

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "napari_gradcamo" / "data" / "models"
NUCLEUS_CHANNEL = "DNA"


def train_nucleus(seed: int = 1, n_fields: int = 16, epochs: int = 6, width: int = 8) -> ModelBundle:
    """The honest scenario's crops, DNA stain only: a one-channel nucleus classifier."""
    full = crops_from_fields(scenario_fields("honest", seed, n_fields), CROP_SHAPE)
    dna = 0  # STAINS[0] == "DNA"
    train = CropSet(full.x[:, dna : dna + 1].copy(), full.y, full.groups, full.masks, full.info)
    normalization = fit_normalization(train.x)
    meta = ModelMetadata(
        "small-cnn-3d", list(CLASS_NAMES), [NUCLEUS_CHANNEL], list(CROP_SHAPE),
        architecture_kwargs={"width": width}, normalization=normalization, target_layer=TARGET_LAYER,
        training={"scenario": "honest, DNA stain only", "seed": seed, "n_fields": n_fields, "epochs": epochs,
                  "crops": len(train)},
    )
    torch.manual_seed(seed)
    model = build_model(meta)
    history = train_classifier(model, train, normalization, epochs=epochs, seed=seed)
    meta.training["final_loss"] = history.loss[-1]
    meta.training["final_accuracy"] = history.accuracy[-1]
    return ModelBundle(model, meta, "nucleus (trained)")


def main(out: Path, only: str | None = None) -> None:
    torch.set_num_threads(2)
    trainers = {name: (lambda s=name: train_scenario(s)) for name in SCENARIOS}
    trainers["nucleus"] = train_nucleus
    for name, train in trainers.items():
        if only and name != only:
            continue
        bundle = train()
        path = save_checkpoint(out / f"{name}.safetensors", bundle.model, bundle.metadata)
        scenario = "honest" if name == "nucleus" else name
        held_out = audit_fields(bundle, scenario_fields(scenario, seed=2, n_fields=12, first_well=20))
        report = {"checkpoint": str(path), "held_out_accuracy": accuracy(held_out), **results.summary(held_out)}
        print(json.dumps({name: report}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", choices=[*SCENARIOS, "nucleus"])
    args = parser.parse_args()
    main(args.out, args.only)
