"""``gradcamo audit`` and ``gradcamo layers``."""

from __future__ import annotations

import json
from pathlib import Path

from napari_gradcamo.audit import results
from napari_gradcamo.cli._common import (
    add_audit_options,
    add_segmentation_options,
    audit_settings,
    progress_bar,
    segmentation_settings,
)


def cmd_audit(args) -> int:
    import tifffile

    from napari_gradcamo.audit.run import run_audit
    from napari_gradcamo.io.images import read_image, read_labels
    from napari_gradcamo.models.checkpoint import load_checkpoint

    names = args.channel_names.split(",") if args.channel_names else None
    image = read_image(args.image, axes=args.axes, channel_names=names, voxel_size=args.voxel_size)
    bundle = load_checkpoint(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.masks:
        labels = read_labels(args.masks)
    else:
        from napari_gradcamo.segment.cellpose import segment

        settings = segmentation_settings(args)
        bar, update = progress_bar("cellpose")
        bar.unit = "plane"
        labels = segment(image, settings, progress=update)
        bar.close()
        tifffile.imwrite(out / "masks.tif", labels, compression="zlib")
    bar, update = progress_bar("Grad-CAMO")
    result = run_audit(image, labels, bundle, audit_settings(args), progress=update)
    bar.close()
    table = result.table.assign(image=Path(args.image).name)
    csv, parquet = results.write_table(table, out, Path(args.image).stem + "_gradcamo")
    print(json.dumps({"table": str(csv), "parquet": str(parquet), **results.summary(table)}, indent=2))
    return 0


def cmd_layers(args) -> int:
    from napari_gradcamo.audit.layers import default_target_layer, layer_tree, list_target_layers
    from napari_gradcamo.models.checkpoint import load_checkpoint

    bundle = load_checkpoint(args.model)
    meta = bundle.metadata
    layers = list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
    chosen = meta.target_layer or (default_target_layer(layers) if layers else None)
    print(bundle.describe())
    print(f"{len(layers)} candidate layers (* = {'stored in the checkpoint' if meta.target_layer else 'default'}):")
    lines = layer_tree(bundle.model, meta.crop_shape, len(meta.channel_names), chosen)
    if args.find:
        lines = [line for line in lines if args.find.lower() in line.lower()]
    print("\n".join(lines))
    return 0


def register(sub) -> None:
    p = sub.add_parser("audit", help="score every cell of an image: where does the model look?")
    p.add_argument("image", help="TIFF / OME-TIFF / .npy image")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, or .pt state dict + .json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--axes", default=None, help="image axes, e.g. ZCYX (default: from the file)")
    p.add_argument("--channel-names", default=None, help="comma-separated channel names")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    seg = p.add_argument_group("masks: give --masks, or segment with cellpose")
    seg.add_argument("--masks", default=None, help="label image (TIFF/.npy) with one id per cell")
    add_segmentation_options(seg)
    add_audit_options(p)
    p.set_defaults(func=cmd_audit)


    p = sub.add_parser("layers", help="list a model's candidate target layers (any depth) as a tree with output shapes")
    p.add_argument("model")
    p.add_argument("--find", default=None, help="show only lines containing this text")
    p.set_defaults(func=cmd_layers)
