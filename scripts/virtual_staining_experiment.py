"""Unlabelled vs AdaGN vs AdaGN + classifier guidance on paired synthetic data (brightfield → 5 stains).

Per seed: fresh train/test fields, one unlabelled U-Net, one AdaGN U-Net, one noisy-stain classifier;
DDIM sampling of cell-centred test crops with the same noise for every condition; the paper's metrics;
where the label and the guidance put their signal (inside cells vs background); Grad-CAMO of the guidance
classifier; wall-clock costs. One JSON line per (seed, condition) goes to ``--out``.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python scripts/virtual_staining_experiment.py \
        --seeds 0 1 2 --out docs/results/virtual_staining_runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_gradcamo.synthetic.brightfield import DEFAULT_DEFOCUS_UM
from napari_gradcamo.virtual_stain.checkpoint import save_model
from napari_gradcamo.virtual_stain.data import cell_crops, synthetic_pairs
from napari_gradcamo.virtual_stain.pipeline import FitSettings, evaluate_model, fit_model


def run_seed(seed: int, args) -> list[dict]:
    """Train both U-Nets and the classifier on fresh fields, evaluate every condition on fresh test fields."""
    train = synthetic_pairs(seed, args.train_fields, args.classes, size=args.field_size)
    test = synthetic_pairs(seed + 1000, args.test_fields, args.classes, size=args.field_size, first_well=100)
    names = [f"class{k}" for k in range(args.classes)]
    common = dict(steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr, widths=args.widths, seed=seed)
    fit = {}
    for kind, labelled, classifier_steps in (("unlabelled", False, 0), ("adagn", True, args.classifier_steps)):
        started = time.perf_counter()
        fit[kind] = fit_model(train, names, FitSettings(labelled=labelled, classifier_steps=classifier_steps, **common),
                              defocus_um=DEFAULT_DEFOCUS_UM)
        fit[kind].training["fit_seconds"] = time.perf_counter() - started
    # one guidance classifier per seed: guides the AdaGN U-Net, audits both
    fit["unlabelled"].classifier = fit["adagn"].classifier
    fit["unlabelled"].classifier_config = fit["adagn"].classifier_config
    if args.save_dir is not None:
        for kind, model in fit.items():
            save_model(args.save_dir / f"{kind}_seed{seed}.safetensors", model, overwrite=True)
    crops = cell_crops(test, fit["adagn"].scaling, args.crop, per_field=args.cells_per_field)
    rows = []
    for kind, model in fit.items():
        scales = args.guidance_scales if kind == "adagn" else ()
        for row in evaluate_model(model, crops, guidance_scales=scales, steps=args.sample_steps,
                                  seed=seed, include_truth=kind == "adagn"):
            condition = row.pop("condition")
            row = {"seed": seed, "model": kind if condition != "ground_truth" else "ground_truth",
                   "condition": condition, **row,
                   **{k: model.training[k] for k in ("unet_seconds_per_step", "final_loss", "fit_seconds")},
                   "classifier_final_loss": fit["adagn"].training["classifier_final_loss"],
                   "train_fields": args.train_fields, "test_fields": args.test_fields, "train_steps": args.steps,
                   "classifier_steps": args.classifier_steps, "sample_steps": args.sample_steps,
                   "crop": args.crop, "widths": args.widths, "classes": args.classes}
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return rows


def summary_table(rows: list[dict]) -> str:
    """Markdown table: mean ± sd over seeds of each metric per condition."""
    cols = ["pcc", "ssim", "mse", "mae", "feature_corr", "frechet_features", "nn_matches", "top5_matches", "mtdist",
            "classifier_prob_true_class", "label_share_in_cells", "guidance_gradcamo", "sample_seconds_per_image"]
    for r in rows:
        r["name"] = r["model"] if r["model"] == "ground_truth" else f"{r['model']}/{r['condition']}"
    order = list(dict.fromkeys(r["name"] for r in rows))
    lines = ["| condition | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for cond in order:
        cells = []
        for c in cols:
            v = np.array([r.get(c, np.nan) for r in rows if r["name"] == cond], float)
            v = v[np.isfinite(v)]
            cells.append("–" if v.size == 0 else f"{v.mean():.3g} ± {v.std():.2g}")
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict]) -> str:
    """Markdown table of the headline metrics for every seed (no averaging)."""
    cols = ["pcc", "ssim", "mae", "feature_corr", "nn_matches", "top5_matches", "mtdist",
            "classifier_prob_true_class", "label_share_in_cells", "background_pixels", "guidance_gradcamo"]
    lines = ["| seed | model/condition | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in sorted(rows, key=lambda r: r["seed"]):
        name = r["model"] if r["model"] == "ground_truth" else f"{r['model']}/{r['condition']}"
        cells = [f"{r[c]:.3g}" if isinstance(r.get(c), (int, float)) else "–" for c in cols]
        lines.append(f"| {r['seed']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train-fields", type=int, default=16)
    parser.add_argument("--test-fields", type=int, default=8)
    parser.add_argument("--field-size", type=int, default=96)
    parser.add_argument("--cells-per-field", type=int, default=5)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (appended to)")
    parser.add_argument("--save-dir", type=Path, default=None, help="also save each seed's models here")
    parser.add_argument("--summarize", type=Path, nargs="+", default=None,
                        help="only print the tables of these JSON lines files (runs of several processes)")
    args = parser.parse_args()
    if args.summarize:
        rows = [json.loads(line) for path in args.summarize for line in path.read_text().splitlines() if line.strip()]
        print(summary_table(rows))
        print()
        print(per_seed_table(rows))
        return
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        seed_rows = run_seed(seed, args)
        rows += seed_rows
        if args.out is not None:
            with open(args.out, "a") as f:
                for r in seed_rows:
                    f.write(json.dumps(r) + "\n")
    print(summary_table(rows))


if __name__ == "__main__":
    main()
