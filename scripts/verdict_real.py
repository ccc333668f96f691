"""The verdict on real 2D Cell Painting pixels: the BBBC022 field with a 2D model, through ``gradcamo``.

The pipeline of docs/validation.md ("Real 2D Cell Painting: BBBC022"): per scenario and seed, synthetic 2D
fields (``gradcamo synthetic --2d``) → ``gradcamo train --arch small-cnn-2d --crop-shape 1 32 32`` (stains
DNA, ER, RNA) → ``gradcamo audit IXMtest_A02_s9.tif`` with cellpose generalist masks (segmented once, by the
first run; later runs reuse its mask file). The audit ends with the verdict (audit/verdict.py). One JSON line
per run is appended to ``--json``: the verdict, each class's verdict and evidence, the layer, the predicted
classes, the wall time and the load average (the machine is shared: figures are labelled "loaded"). Every
run is reported; nothing is selected. There is no true class for these real cells: the model was trained on
synthetic cells, so its class calls on them mean nothing, and the verdict's chance check may say so.

Usage:
    nice -n 10 env OMP_NUM_THREADS=1 python scripts/verdict_real.py --work WORK --seeds 1 \
        --scenarios honest shortcut --json docs/results/verdict_real.jsonl
Models are cached in ``--work`` (rerun to continue).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELD = ROOT.parent / "shared" / "data" / "bbbc022" / "IXMtest_A02_s9.tif"
CHANNELS = "DNA,ER,RNA"
#: As docs/validation.md: the pixel size at which BBBC022 nuclei have the synthetic nuclei's size.
VOXEL_SIZE = ["1", "0.36", "0.36"]


def train(work: Path, scenario: str, seed: int, epochs: int, fields: int) -> Path:
    from napari_gradcamo.cli import main as gradcamo

    root = work / f"{scenario}_s{seed}"
    model = root / "model" / "model.safetensors"
    if model.exists():
        return model
    for args in (
        ["synthetic", str(root / "train"), "--2d", "--scenario", scenario, "--fields", str(fields), "--seed",
         str(seed)],
        ["train", str(root / "train" / "manifest.csv"), "--out", str(root / "model"), "--arch", "small-cnn-2d",
         "--width", "16", "--crop-shape", "1", "32", "32", "--epochs", str(epochs), "--seed", str(seed),
         "--channels", CHANNELS],
    ):
        if gradcamo(args) != 0:
            raise SystemExit(f"gradcamo {' '.join(args)} failed")
    return model


def audit(field: Path, model: Path, out: Path, masks: Path | None, sample: int) -> tuple[int, dict]:
    from napari_gradcamo.cli import main as gradcamo

    args = ["audit", str(field), "--axes", "CYX", "--channel-names", CHANNELS, "--voxel-size", *VOXEL_SIZE,
            "--model", str(model), "--out", str(out), "--verdict-sample", str(sample), "--overwrite"]
    if masks is not None:
        args += ["--masks", str(masks)]
    else:
        args += ["--cellpose-model", "generalist_cyto", "--nucleus-channel", "0", "--cyto-channel", "2",
                 "--diameter", "60"]
    code = gradcamo(args)
    summary = next(out.glob("*_summary.json"), None) if code == 0 else None
    return code, (json.loads(summary.read_text()) if summary else {})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--field", type=Path, default=FIELD)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--scenarios", nargs="+", default=["honest"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--fields", type=int, default=32)
    p.add_argument("--sample", type=int, default=48)
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "verdict_real.jsonl")
    args = p.parse_args(argv)
    import pandas as pd

    masks = None
    for seed in args.seeds:
        for scenario in args.scenarios:
            start = time.time()
            load_before = os.getloadavg()
            model = train(args.work, scenario, seed, args.epochs, args.fields)
            trained = time.time()
            out = args.work / f"{scenario}_s{seed}" / "audit"
            code, summary = audit(args.field, model, out, masks, args.sample)
            if masks is None and code == 0:
                masks = next(out.glob("*_masks.tif"))
            verdict = summary.get("verdict", {})
            table = next(out.glob("*_gradcamo.csv"), None) if code == 0 else None
            predicted = (pd.read_csv(table)["predicted_class"].value_counts().to_dict() if table is not None else {})
            row = {
                "field": args.field.name, "scenario": scenario, "seed": seed, "model": "small-cnn-2d width 16",
                "train": {"fields": args.fields, "epochs": args.epochs}, "exit_code": code,
                "cells_audited": int(sum(predicted.values())), "predicted_classes": predicted,
                "verdict": verdict.get("verdict", "no verdict"), "informative": verdict.get("informative"),
                "layer": verdict.get("layer"), "layer_agreement": verdict.get("layer_agreement"),
                "verdict_cells": verdict.get("cells"), "flagged": verdict.get("flagged"),
                "notes": verdict.get("notes"),
                "classes": {name: {k: c.get(k) for k in ("verdict", "reason", "cells", "causal_mean", "causal_interval",
                                                         "drop_cell_median", "drop_context_median", "gradcam_median")}
                            for name, c in verdict.get("classes", {}).items()},
                "masks": "cellpose generalist_cyto (diameter 60)", "train_s": round(trained - start, 1),
                "audit_and_verdict_s": round(time.time() - trained, 1),
                "machine": "loaded: 2 shared CPU cores, other helpers running",
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in os.getloadavg()],
                "command": " ".join(["python", "scripts/verdict_real.py", *(argv if argv is not None else sys.argv[1:])]),
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            print(json.dumps({k: row[k] for k in ("scenario", "seed", "exit_code", "verdict", "layer",
                                                  "predicted_classes", "classes")}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
