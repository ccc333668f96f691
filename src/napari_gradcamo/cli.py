"""Command line: ``gradcamo audit``, ``gradcamo layers``, ``gradcamo demo``."""

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
