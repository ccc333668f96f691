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
    report = {"table": str(csv), "parquet": str(parquet), **results.summary(table),
              "by_class": results.summary_by(table, "target_class").to_dict(orient="records")}
    if args.sanity:
        report["sanity"] = _sanity(args, image, labels, bundle, out)
    print(json.dumps(report, indent=2))
    return 0


def _sanity(args, image, labels, bundle, out: Path) -> dict:
    """Cascading randomisation on up to 32 cells; writes ``<stem>_sanity.json``, warns on stderr."""
    import sys

    from napari_gradcamo.audit.sanity import check_image

    checked = check_image(image, labels, bundle, audit_settings(args)).as_dict()
    path = out / (Path(args.image).stem + "_sanity.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(checked, indent=2))
    tmp.replace(path)
    for warning in checked["warnings"]:
        print(f"gradcamo: sanity warning: {warning}", file=sys.stderr)
    return {"file": str(path), "passed": checked["passed"], "warnings": len(checked["warnings"])}


def cmd_layers(args) -> int:
    from napari_gradcamo.audit.cam import default_target_layer, list_target_layers
    from napari_gradcamo.models.checkpoint import load_checkpoint

    bundle = load_checkpoint(args.model)
    meta = bundle.metadata
    layers = list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
    default = meta.target_layer or default_target_layer(layers)
    print(bundle.describe())
    for layer in layers:
        print(("* " if layer.name == default else "  ") + layer.label)
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
    p.add_argument("--sanity", action="store_true",
                   help="also randomise the model's layers from the top (cascading) and report how much the maps change")
    p.set_defaults(func=cmd_audit)


    p = sub.add_parser("layers", help="list a model's candidate target layers and their output shapes")
    p.add_argument("model")
    p.set_defaults(func=cmd_layers)
