"""``gradcamo profile``: per-cell profiles, sphering, well aggregates, UMAP."""

from __future__ import annotations

import json
from pathlib import Path

from napari_gradcamo.cli._cache import add_cache_options, load_cache
from napari_gradcamo.cli._common import add_trust_option, check_device, device_name, positive_int, progress_bar


def cmd_profile(args) -> int:
    from napari_gradcamo.io.atomic import check_writable_folder
    from napari_gradcamo.models.checkpoint import load_checkpoint
    from napari_gradcamo.profiles.extract import dataset_class_names, run_profiles

    out = check_writable_folder(args.out)  # before any compute
    check_device(args.device)
    bundle = load_checkpoint(args.model, trusted_factory=args.trust_factory)
    meta = bundle.metadata
    if args.metrics and (out / "metrics.json").exists() and not args.overwrite:
        raise ValueError(f"{out / 'metrics.json'} exists; pass --overwrite or choose another --out.")
    manifest, cache = load_cache(args, args.manifest, out, meta.crop_shape, meta.channel_names,
                                 dataset_class_names(meta))
    bar, update = progress_bar("profiles", "cell")
    try:
        summary = run_profiles(
            bundle, cache.data, out, layer=args.layer, cam_layer=args.cam_layer, control=args.control,
            batch_size=args.batch_size, device=args.device, seed=args.seed, umap=not args.no_umap,
            aggregate=args.aggregate, progress=update,
        )
    finally:
        bar.close()
    if args.metrics:
        control = args.control if args.control is not None else dataset_class_names(meta)[0]
        summary["metrics"] = _write_metrics(args, out, cache.data, control)
    print(json.dumps(summary, indent=2))
    return 0


def _write_metrics(args, out: Path, data, control: str) -> dict:
    """metrics.json + a ``local_quality`` column in cells.parquet (and umap.parquet)."""
    import pandas as pd

    from napari_gradcamo.io.atomic import write_text, write_with
    from napari_gradcamo.profiles.extract import SPHERED_PREFIX, feature_columns
    from napari_gradcamo.profiles.metrics import table_metrics

    table = pd.read_parquet(out / "cells.parquet")
    dose = args.dose_classes.split(",") if args.dose_classes else None
    metrics, quality = table_metrics(table, data.x, feature_columns(table, SPHERED_PREFIX), control=control,
                                     dose_classes=dose, k=args.k, mine=args.mine, seed=args.seed)
    metrics = {"profiles": "sphered features (s_ columns)", **metrics}
    for name in ("cells.parquet", "umap.parquet"):
        if (out / name).exists():
            t = pd.read_parquet(out / name)
            t["local_quality"] = quality
            write_with(out / name, lambda path, t=t: t.to_parquet(path, index=False))
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def register(sub) -> None:
    p = sub.add_parser("profile", help="per-cell profiles (layer features + Grad-CAMO), sphering, well aggregates, UMAP")
    p.add_argument("manifest", help="CSV as for 'gradcamo train'")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="output folder: cells.parquet, wells.parquet, umap_*.png")
    p.add_argument("--layer", default=None, help="feature layer (default: the layer before global pooling)")
    p.add_argument("--cam-layer", default=None, help="Grad-CAM layer for Grad-CAMO (default: the model's)")
    p.add_argument("--control", default=None, help="class whose wells fit the sphering (default: the first class)")
    p.add_argument("--aggregate", choices=("median", "mean"), default="median", help="well-level aggregation")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", type=device_name, default="auto")
    p.add_argument("--seed", type=int, default=0, help="UMAP seed")
    p.add_argument("--no-umap", action="store_true")
    add_trust_option(p)
    g = p.add_argument_group("profile-quality metrics (docs/self-supervised.md)")
    g.add_argument("--metrics", action="store_true", help="write metrics.json and a local_quality column per cell")
    g.add_argument("--dose-classes", default=None, help="comma-separated classes in dose order, for the backbone metric")
    g.add_argument("--k", type=int, default=10, help="neighbourhood size of trustworthiness/continuity/LCMC")
    g.add_argument("--mine", action="store_true", help="also estimate MINE mutual information (slower)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json")
    add_cache_options(p)
    p.set_defaults(func=cmd_profile, lock_folder="out")
