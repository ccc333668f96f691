"""Supervised CNN vs VAE vs SC-VAE vs InfoMax VAE vs hand-crafted features: profile quality and Grad-CAMO, synthetic data.

Data (per seed): synthetic 3D Cell Painting fields (12×64×64, 5 stains) with 5 graded dose levels
(s = 0, ¼, ½, ¾, 1: the cell morphology changes continuously with s, see synthetic/generator.py) and the
planted background confound (class-coded stripes outside the cells). Training wells: the confound follows the
dose. Test wells (another seed, other wells): the confound is drawn at random per well, independent of the
dose, so profiles that encode the background no longer order cells by dose.

Models, trained on the same crops (8×32×32) with the same seed: the small 3D CNN classifier (the dose as 5
classes; profiles = its pooled ``stage3`` features), a VAE, a skip-connection VAE (SC-VAE) and an InfoMax VAE
(same small-CNN trunk as encoder, latent 16, β = 1; profiles = latent means), and hand-crafted scikit-image
features of the cell (no training). ``--models`` picks which (default: all but the SC-VAE, as first run).
Every metric of :mod:`napari_gradcamo.profiles.metrics` on the test cells (profiles z-scored per feature), and
the Grad-CAMO of each learned model at ``stage1``: the classifier's predicted class; for the VAEs the latent
mean projected on the control → highest-dose direction (fitted on the training cells, +d side), and the
latent unit with the largest mean (the raw checkpoint in the audit).

Usage (one seed per process; each writes a JSON line; --write makes the Markdown table):
    python scripts/self_supervised_experiment.py --seed 0 --jsonl docs/results/self_supervised_runs.jsonl
    python scripts/self_supervised_experiment.py --write docs/self_supervised_table.md --jsonl docs/results/self_supervised_runs.jsonl
    python scripts/self_supervised_experiment.py --seed 0 --models vae,sc-vae --jsonl docs/results/sc_vae_runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_gradcamo.audit.batch import BatchCrops, score_batch
from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.latent_targets import class_direction, latent_means, projection_bundle
from napari_gradcamo.crops.datasets import MASK_CELL, MASK_OTHER, crops_from_fields
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.profiles.extract import extract_profiles, feature_columns
from napari_gradcamo.profiles.handcrafted import handcrafted_profiles
from napari_gradcamo.profiles.metrics import pca_reference, profile_metrics
from napari_gradcamo.synthetic.experiment import CROP_SHAPE, FIELD_SHAPE, TARGET_LAYER, VOXEL_SIZE
from napari_gradcamo.synthetic.generator import STAINS, generate_dataset
from napari_gradcamo.train.data import fit_normalization
from napari_gradcamo.train.loop import train_classifier
from napari_gradcamo.train.vae_loop import VaeConfig, fit_vae

DOSES = ["dose0", "dose1", "dose2", "dose3", "dose4"]
#: --models names → the table's names (the VAE objectives are those of ``gradcamo train --objective``)
MODELS = {"supervised": "supervised CNN", "vae": "VAE", "sc-vae": "SC-VAE", "infomax-vae": "InfoMax VAE",
          "hand-crafted": "hand-crafted"}
DEFAULT_MODELS = "supervised,vae,infomax-vae,hand-crafted"
METRICS = ["trustworthiness", "continuity", "lcmc", "knn_accuracy", "linear_accuracy", "backbone_spearman",
           "backbone_straightness", "replicate_map", "activity_map", "mine_nats", "gradcamo", "gradcamo_unit"]


def fields(seed: int, n: int, first_well: int, confound_class=None):
    return generate_dataset(seed, n, n_classes=len(DOSES), shape=FIELD_SHAPE, voxel_size=VOXEL_SIZE,
                            first_well=first_well, confound="background", cell_signal=True,
                            confound_class=confound_class, sites_per_well=1)


def train_supervised(data, seed: int, epochs: int) -> tuple[ModelBundle, list[float]]:
    normalization = fit_normalization(data.x)
    meta = ModelMetadata("small-cnn-3d", list(DOSES), list(STAINS), list(CROP_SHAPE), architecture_kwargs={"width": 8},
                         normalization=normalization, target_layer=TARGET_LAYER)
    torch.manual_seed(seed)
    model = build_model(meta)
    started = time.perf_counter()
    train_classifier(model, data, normalization, epochs=epochs, seed=seed)
    seconds = [(time.perf_counter() - started) / epochs] * epochs  # the loop reports no per-epoch times
    return ModelBundle(model, meta, "supervised"), seconds


def gradcamo_with_targets(bundle: ModelBundle, data, targets) -> np.ndarray:
    """Median-able Grad-CAMO of every test crop for fixed target outputs (the batch loop of the audit)."""
    scores = []
    with CamEngine(bundle.model, TARGET_LAYER if bundle.metadata.architecture != "vae-3d" else "encoder.stage1",
                   "gradcam", "cpu") as engine:
        for start in range(0, len(data), 32):
            idx = np.arange(start, min(start + 32, len(data)))
            codes = np.asarray(data.masks[idx])
            crops = BatchCrops(np.asarray(data.x[idx]), codes == MASK_CELL, codes == MASK_OTHER, [None] * len(idx))
            batch = score_batch(engine, crops, bundle.metadata.normalization, [targets[i] for i in idx])
            scores.extend(s.gradcamo for s in batch.scores)
    return np.asarray(scores, float)


def run_seed(seed: int, args) -> dict:
    torch.set_num_threads(args.threads)
    train = crops_from_fields(fields(seed, args.train_fields, 0), CROP_SHAPE)
    test = crops_from_fields(fields(seed + 1000, args.test_fields, 40, "random"), CROP_SHAPE)
    test.info["class"] = [DOSES[int(c)] for c in test.y]
    classes = test.info["class"].to_numpy()
    wells = test.info["well"].to_numpy()
    dose = test.y / (len(DOSES) - 1)
    reference = pca_reference(test.x, seed=seed)
    record = {"seed": seed, "train_crops": len(train), "test_crops": len(test), "models": {}}

    def evaluate(name, profiles, gradcamo=None, unit_gradcamo=None, seconds=None):
        x = np.asarray(profiles, np.float64)
        x = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
        metrics, _ = profile_metrics(x, reference, classes, wells, control=DOSES[0], dose=dose, k=10,
                                     mine=args.mine, seed=seed)
        metrics = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        if gradcamo is not None:
            metrics["gradcamo"] = float(np.nanmedian(gradcamo))
        if unit_gradcamo is not None:
            metrics["gradcamo_unit"] = float(np.nanmedian(unit_gradcamo))
        if seconds:
            metrics["seconds_per_epoch"] = float(np.mean(seconds))
            metrics["epochs"] = len(seconds)
        record["models"][name] = metrics
        print(seed, name, json.dumps({k: metrics.get(k) for k in METRICS + ["seconds_per_epoch"]}), file=sys.stderr)

    if "supervised" in args.models:
        bundle, seconds = train_supervised(train, seed, args.epochs_supervised)
        table = extract_profiles(bundle, test, layer="stage3", cam_layer=TARGET_LAYER, device="cpu")
        evaluate("supervised CNN", table[feature_columns(table)].to_numpy(), table["gradcamo"].to_numpy(), None,
                 seconds)

    for objective in (m for m in ("vae", "sc-vae", "infomax-vae") if m in args.models):
        name = MODELS[objective]
        config = VaeConfig(objective=objective, latent_dim=16, beta=1.0, epochs=args.epochs_vae, seed=seed,
                           mi_weight=args.mi_weight if objective == "infomax-vae" else 0.0, val_fraction=0.2,
                           batch_size=args.batch_size_vae, device="cpu")
        result = fit_vae(train, DOSES, STAINS, CROP_SHAPE, config)
        vae = ModelBundle(result.model, result.metadata, name)
        train_mu = latent_means(vae, train.x)
        direction = class_direction(train_mu, [DOSES[int(c)] for c in train.y], DOSES[0], DOSES[-1])
        along = gradcamo_with_targets(projection_bundle(vae, direction, ["dose"]), test, [0] * len(test))
        test_mu = latent_means(vae, test.x)
        unit = gradcamo_with_targets(vae, test, test_mu.argmax(1).tolist())
        evaluate(name, test_mu, along, unit, result.history.seconds)
        record["models"][name]["final_mutual_information"] = result.history.mutual_information[-1]
        record["models"][name]["best_epoch"] = result.best_epoch

    if "hand-crafted" in args.models:
        started = time.perf_counter()
        hand = handcrafted_profiles(test, STAINS)
        evaluate("hand-crafted", hand.to_numpy())
        record["models"]["hand-crafted"]["seconds_total"] = time.perf_counter() - started
    return record


def model_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown or text!r}; choose from {', '.join(MODELS)}")
    return names


def markdown(table: pd.DataFrame) -> str:
    def cell(v):
        return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_table(jsonl: Path, out: Path) -> None:
    runs = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    rows = [{"seed": r["seed"], "profiles": name, **m} for r in runs for name, m in r["models"].items()]
    table = pd.DataFrame(rows)
    cols = ["profiles", "seed"] + [c for c in METRICS if c in table] + [c for c in ("seconds_per_epoch",) if c in table]
    table = table[cols].sort_values(["profiles", "seed"])
    mean = table.drop(columns="seed").groupby("profiles", sort=False).mean(numeric_only=True).reset_index()
    mean.insert(1, "seed", "mean")
    text = markdown(pd.concat([table, mean]))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(out)
    print(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--jsonl", type=Path, required=True)
    p.add_argument("--write", type=Path, default=None, help="write the Markdown table of every run in --jsonl")
    p.add_argument("--train-fields", type=int, default=10, help="training fields (one per well, 2 wells per dose)")
    p.add_argument("--test-fields", type=int, default=10)
    p.add_argument("--epochs-supervised", type=int, default=6)
    p.add_argument("--epochs-vae", type=int, default=8)
    p.add_argument("--mi-weight", type=float, default=500.0)
    p.add_argument("--batch-size-vae", type=int, default=8)
    p.add_argument("--mine", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", type=model_list, default=model_list(DEFAULT_MODELS),
                   help=f"comma-separated, from {', '.join(MODELS)} (default {DEFAULT_MODELS})")
    args = p.parse_args(argv)
    if args.seed is not None:
        record = run_seed(args.seed, args)
        record["settings"] = {k: v for k, v in vars(args).items() if k not in ("jsonl", "write")}
        with args.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
    if args.write is not None:
        write_table(args.jsonl, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
