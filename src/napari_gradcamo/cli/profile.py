"""``gradcamo profile``: per-cell profiles, sphering, well aggregates, UMAP."""

from __future__ import annotations

import json

from napari_gradcamo.cli._cache import add_cache_options, load_cache
from napari_gradcamo.cli._common import add_trust_option, check_device, device_name, positive_int, progress_bar


def cmd_profile(args) -> int:
    from napari_gradcamo.io.atomic import check_writable_folder
    from napari_gradcamo.models.checkpoint import load_checkpoint
    from napari_gradcamo.profiles.extract import run_profiles

    out = check_writable_folder(args.out)  # before any compute
    check_device(args.device)
    bundle = load_checkpoint(args.model, trusted_factory=args.trust_factory)
    meta = bundle.metadata
    manifest, cache = load_cache(args, args.manifest, out, meta.crop_shape, meta.channel_names, meta.class_names)
    bar, update = progress_bar("profiles", "cell")
    try:
        summary = run_profiles(
            bundle, cache.data, out, layer=args.layer, cam_layer=args.cam_layer, control=args.control,
            batch_size=args.batch_size, device=args.device, seed=args.seed, umap=not args.no_umap,
            aggregate=args.aggregate, progress=update,
        )
    finally:
        bar.close()
    print(json.dumps(summary, indent=2))
    return 0


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
    add_cache_options(p)
    p.set_defaults(func=cmd_profile)
