"""Command line: ``gradcamo audit``, ``gradcamo layers``, ``gradcamo demo``, ``gradcamo train``,
``gradcamo profile``, ``gradcamo synthetic``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import results


def _progress_bar(description: str):
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="cell", dynamic_ncols=True)

    def update(done: int, total: int, message: str = "") -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _add_audit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Grad-CAM")
    g.add_argument("--method", default="gradcam", help="gradcam, gradcam++, hirescam, layercam, xgradcam or eigencam")
    g.add_argument("--layer", default=None, help="target layer (see 'gradcamo layers'); default: the model's")
    g.add_argument("--target-class", default=None, help="class name or index; default: the predicted class")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    g.add_argument("--threshold", type=float, default=0.5, help="flag cells with Grad-CAMO below this")
    g.add_argument("--channel-map", default=None, help="image channel index per model channel, e.g. 0,1,2,3,4")


def _settings(args):
    from .audit import AuditSettings

    channel_map = [int(i) for i in args.channel_map.split(",")] if args.channel_map else None
    return AuditSettings(
        method=args.method,
        target_layer=args.layer,
        target_class=args.target_class,
        batch_size=args.batch_size,
        device=args.device,
        threshold=args.threshold,
        channel_map=channel_map,
    )


def cmd_audit(args) -> int:
    import tifffile

    from .audit import run_audit
    from .images import read_image, read_labels
    from .models import load_checkpoint

    names = args.channel_names.split(",") if args.channel_names else None
    image = read_image(args.image, axes=args.axes, channel_names=names, voxel_size=args.voxel_size)
    bundle = load_checkpoint(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.masks:
        labels = read_labels(args.masks)
    else:
        from .segmentation import SegmentationSettings, segment

        settings = SegmentationSettings(
            model=args.cellpose_model,
            nucleus_channel=args.nucleus_channel,
            cyto_channel=args.cyto_channel,
            diameter=args.diameter,
            mode=args.mode,
            stitch_threshold=args.stitch_threshold,
        )
        bar, update = _progress_bar("cellpose")
        bar.unit = "plane"
        labels = segment(image, settings, progress=update)
        bar.close()
        tifffile.imwrite(out / "masks.tif", labels, compression="zlib")
    bar, update = _progress_bar("Grad-CAMO")
    result = run_audit(image, labels, bundle, _settings(args), progress=update)
    bar.close()
    table = result.table.assign(image=Path(args.image).name)
    csv, parquet = results.write_table(table, out, Path(args.image).stem + "_gradcamo")
    print(json.dumps({"table": str(csv), "parquet": str(parquet), **results.summary(table)}, indent=2))
    return 0


def cmd_layers(args) -> int:
    from .cam import default_target_layer, list_target_layers
    from .models import load_checkpoint

    bundle = load_checkpoint(args.model)
    meta = bundle.metadata
    layers = list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
    default = meta.target_layer or default_target_layer(layers)
    print(bundle.describe())
    for layer in layers:
        print(("* " if layer.name == default else "  ") + layer.label)
    return 0


def cmd_demo(args) -> int:
    if not args.headless:
        from ._demo_viewer import open_demo

        return open_demo()
    from .demo import run_headless_demo

    summary = run_headless_demo(Path(args.out))
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------ train / profile


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crops and masks")
    g.add_argument("--cache", default=None, help="crop cache folder (default: OUT/crops); reused while the manifest is unchanged")
    g.add_argument("--max-padded-fraction", type=float, default=0.5, help="skip cells whose crop lies mostly outside the image")
    g.add_argument("--cellpose-model", default="cyto3", help="for rows without masks: named cellpose model, model file, or generalist_cyto")
    g.add_argument("--nucleus-channel", type=int, default=None)
    g.add_argument("--cyto-channel", type=int, default=None)
    g.add_argument("--diameter", type=float, default=None)
    g.add_argument("--mode", choices=("stitch2d", "3d"), default="stitch2d")
    g.add_argument("--stitch-threshold", type=float, default=0.3)


def _segmentation_defaults(args):
    from .segmentation import SegmentationSettings

    return SegmentationSettings(model=args.cellpose_model, nucleus_channel=args.nucleus_channel,
                                cyto_channel=args.cyto_channel, diameter=args.diameter, mode=args.mode,
                                stitch_threshold=args.stitch_threshold)


def _step_bar(description: str, unit: str = "step"):
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True)

    def update(done: int, total: int, message: str = "") -> None:
        bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return bar, update


def _load_cache(args, manifest_path, out: Path, crop_shape, channel_names=None, class_names=None):
    from .manifest import build_cache, read_manifest

    manifest = read_manifest(manifest_path)
    bar, update = _step_bar("crops", "image")
    try:
        cache = build_cache(manifest, crop_shape, Path(args.cache) if args.cache else out / "crops",
                            channel_names=channel_names, class_names=class_names,
                            max_padded_fraction=args.max_padded_fraction, segmentation=_segmentation_defaults(args),
                            progress=update)
    finally:
        bar.close()
    return manifest, cache


def cmd_train(args) -> int:
    from .training import BEST_FILE, TrainConfig, fit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    channels = args.channels.split(",") if args.channels else None
    classes = args.classes.split(",") if args.classes else None
    manifest, cache = _load_cache(args, args.manifest, out, args.crop_shape, channels, classes)
    kwargs = json.loads(args.arch_kwargs) if args.arch_kwargs else ({"width": args.width} if args.arch == "small-cnn-3d" else {})
    config = TrainConfig(
        architecture=args.arch, architecture_kwargs=kwargs, target_layer=args.layer, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, patience=args.patience, balance=args.balance, jitter=args.jitter,
        gradcamo_weight=args.gradcamo_weight, seed=args.seed, device=args.device, amp=not args.no_amp,
    )
    print(f"{len(cache.data)} crops of {len(manifest)} fields, classes {cache.class_names}, channels "
          f"{cache.channel_names}; cache {cache.folder} ({'reused' if cache.reused else 'built'})", file=sys.stderr)
    bar, update = _step_bar("train", "batch")

    def epoch_end(epoch: int, stats: dict) -> None:
        text = f"epoch {epoch}: loss {stats['loss']:.3f} acc {stats['accuracy']:.2f}"
        if stats.get("val_loss") is not None:
            text += f", val loss {stats['val_loss']:.3f} acc {stats['val_accuracy']:.2f}"
        if args.gradcamo_weight > 0:
            text += f", penalty {stats['penalty']:.3f}"
        bar.write(text, file=sys.stderr)

    extra = {"manifest": str(Path(args.manifest).resolve()), "crop_cache": str(cache.folder)}
    try:
        result = fit(cache.data, cache.class_names, cache.channel_names, args.crop_shape, config, out,
                     resume=args.resume, extra_metadata=extra, progress=update, epoch_end=epoch_end)
    finally:
        bar.close()
    summary = {
        "checkpoint": str(out / BEST_FILE), "best_epoch": result.best_epoch, "epochs_run": len(result.history.loss),
        "stopped_early": result.stopped_early,
        "val_accuracy": result.history.val_accuracy[result.best_epoch - 1] if result.history.val_accuracy else None,
        "val_loss": result.history.val_loss[result.best_epoch - 1] if result.history.val_loss else None,
        "test": result.test, "crops": {k: int(len(v)) for k, v in result.split.items()},
        "target_layer": result.metadata.target_layer,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_profile(args) -> int:
    from .models import load_checkpoint
    from .profiles import run_profiles

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = load_checkpoint(args.model)
    meta = bundle.metadata
    manifest, cache = _load_cache(args, args.manifest, out, meta.crop_shape, meta.channel_names, meta.class_names)
    bar, update = _step_bar("profiles", "cell")
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


def cmd_synthetic(args) -> int:
    from .manifest import write_synthetic_manifest

    confound = args.confound_class
    if confound is not None and confound not in ("mismatch", "random"):
        confound = int(confound)
    path = write_synthetic_manifest(args.out, args.scenario, seed=args.seed, n_fields=args.fields,
                                    first_well=args.first_well, confound_class=confound, n_cells=args.cells,
                                    sites_per_well=args.sites_per_well)
    print(json.dumps({"manifest": str(path)}, indent=2))
    return 0


def _add_train_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a 3D crop classifier from a manifest (CSV) of images and masks")
    p.add_argument("manifest", help="CSV with image, class, plate, well, site and masks (or cellpose settings)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, last.safetensors, resume.pt, history.csv")
    p.add_argument("--arch", default="small-cnn-3d", help="small-cnn-3d or efficientnet-b0 … efficientnet-b7")
    p.add_argument("--width", type=int, default=8, help="small CNN width")
    p.add_argument("--arch-kwargs", default=None, help="JSON architecture keyword arguments (overrides --width)")
    p.add_argument("--crop-shape", type=int, nargs=3, default=[8, 32, 32], metavar=("Z", "Y", "X"))
    p.add_argument("--channels", default=None, help="comma-separated stains to use, in order (default: the first image's)")
    p.add_argument("--classes", default=None, help="comma-separated class order (default: sorted class names)")
    p.add_argument("--layer", default=None, help="Grad-CAM layer stored in the checkpoint and used by the regulariser")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of wells (per class) for validation")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share of wells (per class) held out as a test split")
    p.add_argument("--patience", type=int, default=5, help="stop after this many epochs without a lower validation loss (0: never)")
    p.add_argument("--balance", choices=("loss", "sampler", "none"), default="loss",
                   help="class balance: weighted loss, balanced sampling, or none")
    p.add_argument("--jitter", type=float, default=0.1, help="per-channel intensity jitter (s.d. of the gain)")
    p.add_argument("--gradcamo-weight", type=float, default=0.0, metavar="LAMBDA",
                   help="weight λ of the Grad-CAMO penalty λ·(1 − Grad-CAMO) (0: plain training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (resume.pt)")
    _add_cache_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="per-cell profiles (layer features + Grad-CAMO), sphering, well aggregates, UMAP")
    p.add_argument("manifest", help="CSV as for 'gradcamo train'")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="output folder: cells.parquet, wells.parquet, umap_*.png")
    p.add_argument("--layer", default=None, help="feature layer (default: the layer before global pooling)")
    p.add_argument("--cam-layer", default=None, help="Grad-CAM layer for Grad-CAMO (default: the model's)")
    p.add_argument("--control", default=None, help="class whose wells fit the sphering (default: the first class)")
    p.add_argument("--aggregate", choices=("median", "mean"), default="median", help="well-level aggregation")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="UMAP seed")
    p.add_argument("--no-umap", action="store_true")
    _add_cache_options(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("synthetic", help="write synthetic 3D Cell Painting fields + masks + manifest.csv")
    p.add_argument("out", help="output folder")
    p.add_argument("--scenario", choices=("honest", "shortcut"), default="honest")
    p.add_argument("--fields", type=int, default=16, help="fields (--sites-per-well sites per well, wells alternate classes)")
    p.add_argument("--cells", type=int, default=12, help="cells per field")
    p.add_argument("--sites-per-well", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--first-well", type=int, default=0)
    p.add_argument("--confound-class", default=None, help="break the background confound: mismatch, random or a class index")
    p.set_defaults(func=cmd_synthetic)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradcamo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("audit", help="score every cell of an image: where does the model look?")
    p.add_argument("image", help="TIFF / OME-TIFF / .npy image")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, or .pt state dict + .json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--axes", default=None, help="image axes, e.g. ZCYX (default: from the file)")
    p.add_argument("--channel-names", default=None, help="comma-separated channel names")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    seg = p.add_argument_group("masks: give --masks, or segment with cellpose")
    seg.add_argument("--masks", default=None, help="label image (TIFF/.npy) with one id per cell")
    seg.add_argument("--cellpose-model", default="cyto3", help="named cellpose model (needs internet once), a model file, or generalist_cyto (offline-capable)")
    seg.add_argument("--nucleus-channel", type=int, default=None)
    seg.add_argument("--cyto-channel", type=int, default=None)
    seg.add_argument("--diameter", type=float, default=None, help="cell diameter in pixels (default: the model's own)")
    seg.add_argument("--mode", choices=("stitch2d", "3d"), default="stitch2d")
    seg.add_argument("--stitch-threshold", type=float, default=0.3)
    _add_audit_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("layers", help="list a model's candidate target layers and their output shapes")
    p.add_argument("model")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("demo", help="the whole chain on bundled sample data, offline")
    p.add_argument("--headless", action="store_true", help="no viewer: write the tables and a summary")
    p.add_argument("--out", default="gradcamo-demo", help="output folder (headless)")
    p.set_defaults(func=cmd_demo)

    _add_train_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .images import ImageError
    from .models import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ImageError, CheckpointError, ValueError) as error:
        print(f"gradcamo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
