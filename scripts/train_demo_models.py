"""Train the two bundled demo models (honest, shortcut) on synthetic data and report their audit.

Usage: python scripts/train_demo_models.py [OUT_DIR]   (≈2–3 min on 2 CPU cores; seeded)
"""

import json
import sys
from pathlib import Path

import torch

from napari_gradcamo.audit import results
from napari_gradcamo.models.checkpoint import save_checkpoint
from napari_gradcamo.synthetic.experiment import SCENARIOS, accuracy, audit_fields, scenario_fields, train_scenario

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "napari_gradcamo" / "data" / "models"


def main(out: Path) -> None:
    torch.set_num_threads(2)
    report = {}
    for scenario in SCENARIOS:
        bundle = train_scenario(scenario)
        path = save_checkpoint(out / f"{scenario}.safetensors", bundle.model, bundle.metadata)
        held_out = audit_fields(bundle, scenario_fields(scenario, seed=2, n_fields=12, first_well=20))
        report[scenario] = {"checkpoint": str(path), "held_out_accuracy": accuracy(held_out), **results.summary(held_out)}
        print(json.dumps({scenario: report[scenario]}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
