"""``gradcamo sweep``: Grad-CAMO of every cell at several target layers in one pass of the model."""

from __future__ import annotations

import json
from pathlib import Path

from napari_gradcamo.cli._common import add_audit_options, add_trust_option, audit_settings, progress_bar


def cmd_sweep(args) -> int:
    from napari_gradcamo.audit.layer_sweep import plot_sweep, run_sweep, sweep_summary
    from napari_gradcamo.io.images import read_image, read_labels
    from napari_gradcamo.models.checkpoint import load_checkpoint
    from napari_gradcamo.output import results

    names = args.channel_names.split(",") if args.channel_names else None
    image = read_image(args.image, axes=args.axes, channel_names=names, voxel_size=args.voxel_size)
    labels = read_labels(args.masks)
    bundle = load_checkpoint(args.model, trusted_factory=args.trust_factory)
    layers = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    out, stem = Path(args.out), Path(args.image).stem
    planned = [out / f"{stem}_{n}_gradcamo.csv" for n in layers or []] + [out / f"{stem}_layers.csv"]
    taken = [str(p) for p in planned if p.exists()]
    if taken:
        raise ValueError(f"{', '.join(taken)} already exist; give another --out folder (results are never overwritten).")
    bar, update = progress_bar("layer sweep")
    tables = run_sweep(image, labels, bundle, layers, audit_settings(args), progress=update)
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in tables.items():
        csv, _ = results.write_table(table.assign(image=Path(args.image).name), out, f"{stem}_{name}_gradcamo")
        written[name] = str(csv)
    per_layer = sweep_summary(tables)
    summary_csv = out / f"{stem}_layers.csv"
    tmp = summary_csv.with_suffix(".csv.tmp")
    per_layer.to_csv(tmp, index=False)
    tmp.replace(summary_csv)
    figure = out / f"{stem}_layers_{args.score}.png"
    plot_sweep(tables, figure, args.score, title=f"{Path(args.image).name}: {args.score} per layer")
    print(json.dumps({"tables": written, "summary": str(summary_csv), "figure": str(figure),
                      "layers": per_layer.to_dict(orient="records")}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="score every cell at several target layers (one pass) and compare them")
    p.add_argument("image", help="TIFF / OME-TIFF / .npy image")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, or .pt state dict + .json) or a bioimage.io package (.zip, folder, rdf.yaml)")
    p.add_argument("--masks", required=True, help="label image (TIFF/.npy) with one id per cell")
    p.add_argument("--out", required=True, help="output folder")
    add_trust_option(p)
    p.add_argument("--layers", default=None,
                   help="comma-separated layers (see 'gradcamo layers'); default: the model's top-level stages")
    p.add_argument("--score", choices=("normalised", "lift", "gradcamo"), default="normalised",
                   help="score plotted per layer")
    p.add_argument("--axes", default=None, help="image axes, e.g. ZCYX (default: from the file)")
    p.add_argument("--channel-names", default=None, help="comma-separated channel names")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    add_audit_options(p)
    p.set_defaults(func=cmd_sweep, lock_folder="out")
