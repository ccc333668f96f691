"""Grad-CAMO as a training regulariser, measured on synthetic confounded data.

Training fields: the cells carry the treatment (morphology) AND a background texture outside the cells
carries it too (``confound="background", cell_signal=True``), so a model may learn either. For each seed
and each λ (``--gradcamo-weight``) the small 3D CNN is trained (same data, same initial weights, same
augmentation draws) with loss = cross-entropy + λ·(1 − the share of the true class's local
contributions inside the cell at ``stage1``; see ``train/regularizer.py``), then measured on

* validation: held-out wells with the same confound (accuracy; median Grad-CAMO of the audit,
  GradCAM at stage1 for the predicted class, as ``gradcamo audit`` computes it);
* confound broken: held-out wells whose background shows the *other* class (``confound_class="mismatch"``),
  and wells whose background class is random (``"random"``) — a model that reads the background flips
  its answers; one that reads the cells holds.

Usage: python scripts/regularizer_experiment.py --seeds 0 1 2 3 4 5 6 7 8 9 10 11 --lambdas 0 0.5 --threads 1 \
    --json docs/results/regularizer_runs.jsonl --write docs/regularizer_runs.md
(≈ 20 s per run on one idle CPU core). The runs are deterministic for a given thread count: the same
command gives the same numbers (a different ``--threads`` changes the floating-point order and so the runs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from napari_gradcamo.crops.datasets import crops_from_fields
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.synthetic.experiment import (
    CLASS_NAMES,
    CROP_SHAPE,
    FIELD_SHAPE,
    TARGET_LAYER,
    VOXEL_SIZE,
    accuracy,
    audit_fields,
)
from napari_gradcamo.synthetic.generator import STAINS, generate_dataset
from napari_gradcamo.train.data import fit_normalization
from napari_gradcamo.train.loop import train_classifier

ROOT = Path(__file__).resolve().parents[1]


def fields(seed: int, n: int, first_well: int, confound_class=None):
    return generate_dataset(seed, n, n_classes=len(CLASS_NAMES), shape=FIELD_SHAPE, voxel_size=VOXEL_SIZE,
                            first_well=first_well, confound="background", cell_signal=True,
                            confound_class=confound_class)


def run(seed: int, lam: float, args, data, val_fields, test_fields, random_fields) -> dict:
    normalization = fit_normalization(data.x)
    meta = ModelMetadata("small-cnn-3d", list(CLASS_NAMES), list(STAINS), list(CROP_SHAPE),
                         architecture_kwargs={"width": args.width}, normalization=normalization,
                         target_layer=TARGET_LAYER)
    torch.manual_seed(seed)
    model = build_model(meta)
    start = time.perf_counter()
    history = train_classifier(model, data, normalization, epochs=args.epochs, seed=seed,
                               gradcamo_weight=lam, target_layer=TARGET_LAYER)
    seconds = time.perf_counter() - start
    bundle = ModelBundle(model, meta, f"λ={lam}")
    val = audit_fields(bundle, val_fields)
    test = audit_fields(bundle, test_fields)
    shuffled = audit_fields(bundle, random_fields)
    return {
        "seed": seed, "lambda": lam, "train_seconds": round(seconds, 1),
        "train_accuracy": history.accuracy[-1], "final_penalty": history.penalty[-1],
        "val_accuracy": accuracy(val), "val_gradcamo": float(val["gradcamo"].median()),
        "val_chance": float(val["chance"].median()), "val_normalised": float(val["normalised"].median()),
        "val_undefined": float(val["gradcamo"].isna().mean()), "val_background_share": float(val["background_share"].median()),
        "broken_accuracy": accuracy(test), "broken_gradcamo": float(test["gradcamo"].median()),
        "shuffled_accuracy": accuracy(shuffled),
    }


def table_markdown(results: pd.DataFrame) -> str:
    """Mean ± s.d. per λ, then every run, with each penalised run's change against λ = 0 of its seed."""
    rows = ["| λ | seeds | validation accuracy | median Grad-CAMO (validation) | median normalised | background share "
            "(validation) | accuracy, backgrounds swapped | accuracy, backgrounds shuffled |",
            "|---|---|---|---|---|---|---|---|"]
    for lam, part in results.groupby("lambda"):
        def ms(col, fmt="{:.3f}", part=part):
            return f"{fmt.format(part[col].mean())} ± {fmt.format(part[col].std(ddof=0))}"
        rows.append(f"| {lam:g} | {len(part)} | {ms('val_accuracy', '{:.2f}')} | {ms('val_gradcamo')} | "
                    f"{ms('val_normalised')} | {ms('val_background_share', '{:.2f}')} | "
                    f"{ms('broken_accuracy', '{:.2f}')} | {ms('shuffled_accuracy', '{:.2f}')} |")
    rows += ["", "Every run (Δ: against λ = 0 of the same seed):", "",
             "| seed | λ | val acc | median Grad-CAMO | median normalised | background share | acc, swapped "
             "| Δ acc, swapped | acc, shuffled | Δ acc, shuffled |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    plain = results[results["lambda"] == 0].set_index("seed")
    for _, r in results.sort_values(["seed", "lambda"]).iterrows():
        def delta(col, r=r):
            if r["lambda"] == 0 or r["seed"] not in plain.index:
                return "–"
            return f"{r[col] - plain.loc[r['seed'], col]:+.2f}"
        rows.append(f"| {int(r['seed'])} | {r['lambda']:g} | {r['val_accuracy']:.2f} | {r['val_gradcamo']:.3f} | "
                    f"{r['val_normalised']:.3f} | {r['val_background_share']:.2f} | {r['broken_accuracy']:.2f} | "
                    f"{delta('broken_accuracy')} | {r['shuffled_accuracy']:.2f} | {delta('shuffled_accuracy')} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1.0, 5.0])
    p.add_argument("--fields", type=int, default=16, help="training fields (4 sites per well)")
    p.add_argument("--eval-fields", type=int, default=12)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="append each run's result as a JSON line to this file")
    p.add_argument("--write", default=None, help="write the note (markdown) here, e.g. docs/regularizer.md")
    p.add_argument("--from-json", default=None, help="re-render the table and note from a --json file of finished runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    if args.from_json:
        results = [json.loads(line) for line in Path(args.from_json).read_text().splitlines() if line.strip()]
        args.seeds = sorted({r["seed"] for r in results})
        args.lambdas = sorted({r["lambda"] for r in results})
    for seed in [] if args.from_json else args.seeds:
        data = crops_from_fields(fields(seed, args.fields, first_well=0), CROP_SHAPE)
        val_fields = fields(100 + seed, args.eval_fields, first_well=20)
        test_fields = fields(200 + seed, args.eval_fields, first_well=40, confound_class="mismatch")
        random_fields = fields(300 + seed, args.eval_fields, first_well=60, confound_class="random")
        for lam in args.lambdas:
            r = run(seed, lam, args, data, val_fields, test_fields, random_fields)
            results.append(r)
            print(json.dumps(r), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    table = pd.DataFrame(results)
    md = table_markdown(table)
    print(md)
    if args.write:
        # the runs are deterministic (seeded data, weights and augmentation); --json/--from-json only log or
        # re-render them, so the recorded command is the one that trains
        command = "python scripts/regularizer_experiment.py " + " ".join(
            [f"--seeds {' '.join(map(str, args.seeds))}", f"--lambdas {' '.join(f'{l:g}' for l in args.lambdas)}"]
            + [f"--{k} {getattr(args, k.replace('-', '_'))}" for k in ("fields", "eval-fields", "epochs", "width")
               if getattr(args, k.replace("-", "_")) != p.get_default(k.replace("-", "_"))]
            + ["--write", shlex.quote(args.write)])
        write_note(Path(args.write), md, command, args, table)
    return 0


def write_note(path: Path, md: str, command: str, args, results: pd.DataFrame) -> None:
    """The set-up and the tables, nothing else: the reading of them is written by hand (docs/regularizer.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NOTE.format(table=md, command=command, epochs=args.epochs, fields=args.fields,
                                eval_fields=args.eval_fields, width=args.width))


NOTE = """# Grad-CAMO regulariser: every run

Written by `scripts/regularizer_experiment.py`; what the numbers mean is in docs/regularizer.md.
Loss = cross-entropy + λ · (1 − share of the true class's local contributions |∂logit/∂A · A| inside the
cell) at `stage1` (`napari_gradcamo/train/regularizer.py`); λ = 0 is exactly the plain loop.

- Training: {fields} synthetic 3D fields (5 stains, 12×64×64; the cells **and** a background texture carry
  the class), small 3D CNN (width {width}), 8×32×32 crops, {epochs} epochs, AdamW + one-cycle LR, batch 16;
  for each seed the same data, initial weights and augmentation draws at every λ.
- Validation: {eval_fields} fields from unseen wells, confound intact; the audit's Grad-CAMO (GradCAM at
  `stage1`, predicted class), normalised = (Grad-CAMO − chance) / (1 − chance).
- Backgrounds swapped / shuffled: {eval_fields} fields each from further unseen wells whose background shows
  the other class / a random class.

```
{command}
```

{table}
"""


if __name__ == "__main__":
    sys.exit(main())
