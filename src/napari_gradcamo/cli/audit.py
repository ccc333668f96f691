"""``gradcamo audit`` and ``gradcamo layers``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from napari_gradcamo.cli._common import (
    add_audit_options,
    add_segmentation_options,
    add_trust_option,
    audit_settings,
    check_device,
    interrupts_cancel,
    output_stem,
    positive_int,
    progress_bar,
    segmentation_settings,
)
from napari_gradcamo.io.atomic import OutputError
from napari_gradcamo.output import provenance, results


def cmd_audit(args) -> int:
    from napari_gradcamo.audit.run import run_audit
    from napari_gradcamo.io.atomic import check_writable_folder, refuse_existing
    from napari_gradcamo.io.images import read_image, read_labels
    from napari_gradcamo.io.lazy import is_zarr, open_image, open_labels
    from napari_gradcamo.io.ome_zarr import has_label_image
    from napari_gradcamo.models.checkpoint import load_checkpoint
    from napari_gradcamo.progress import CancelToken

    out = check_writable_folder(args.out)  # before any compute
    check_device(args.device)
    auto_layer = args.layer == "auto"
    if auto_layer:
        args.layer = None
    settings = audit_settings(args)
    names = args.channel_names.split(",") if args.channel_names else None
    lazy = is_zarr(args.image)  # OME-Zarr: each crop reads only its window; TIFF/npy are read and checked whole
    reader = open_image if lazy else read_image
    image = reader(args.image, axes=args.axes, channel_names=names, voxel_size=args.voxel_size)
    own_labels = lazy and not args.masks and has_label_image(args.image)  # an OME-Zarr image with its labels
    bundle = load_checkpoint(args.model, trusted_factory=args.trust_factory)
    stem = output_stem(args.image)
    csv, parquet, record_path = results.table_paths(out, f"{stem}_gradcamo")
    verdict_paths = [out / f"{stem}_verdict.json", out / f"{stem}_verdict_cells.csv", out / f"{stem}_summary.json"]
    masks_out = None if args.masks or own_labels else out / f"{stem}_masks.tif"
    seg = None if args.masks or own_labels else segmentation_settings(args)
    record = provenance.start_record(
        "audit", args.model, bundle.metadata.model_dump(), {"image": args.image, "masks": args.masks},
        {"audit": settings, "segmentation": seg, "axes": args.axes, "channel_names": names,
         "voxel_size": args.voxel_size, "trusted_factory": args.trust_factory})
    if args.resume:
        done = _previous_rows(parquet, record)
    else:
        refuse_existing([csv, parquet, record_path, *([masks_out] if masks_out else []),
                         *(verdict_paths if args.verdict else [])], args.overwrite)
        done = None
    if args.masks or own_labels:
        labels = open_labels(args.image, args.masks)
    elif args.resume and masks_out.exists():
        labels = read_labels(masks_out)  # the masks this run wrote before it was interrupted
    else:
        labels = _segment(image, seg, masks_out)
    verdict = None
    if args.verdict or auto_layer:
        verdict = _verdict(args, image, labels, bundle, settings)
        if auto_layer:
            if verdict is None or verdict.layer not in verdict.layer_agreement:
                raise ValueError("--layer auto needs the verdict's layer, and the verdict chose none "
                                 f"({verdict.notes[0] if verdict and verdict.notes else 'no candidate layer'}); "
                                 "give --layer NAME (see 'gradcamo layers').")
            settings.target_layer = verdict.layer
    all_ids = [int(i) for i in np.unique(labels) if i != 0]
    finished = set() if done is None else set(done["label"].astype(int))
    bar, update = progress_bar("Grad-CAMO")
    with interrupts_cancel(CancelToken()) as cancel:
        try:
            result = run_audit(image, labels, bundle, settings, [i for i in all_ids if i not in finished],
                               progress=update, cancel=cancel)
        finally:
            bar.close()
    table = result.table.assign(image=Path(args.image).name)
    if done is not None:
        table = pd.concat([done, table], ignore_index=True).sort_values("label", ignore_index=True)
    complete = not result.cancelled
    record = provenance.finish_record(record, complete, cells_done=len(table), cells_total=len(all_ids))
    results.write_table(table, out, f"{stem}_gradcamo", record)
    split = int((table["pieces"] > 1).sum()) if "pieces" in table else 0
    if split:
        print(f"gradcamo: warning: {split} label(s) consist of several separate pieces (column 'pieces'); "
              "each is scored on the mask inside its crop — check the label image.", file=sys.stderr)
    report = {"table": str(csv), "parquet": str(parquet), "run_record": str(record_path), "completed": complete,
              **results.summary(table),
              "by_class": results.summary_by(table, "target_class").to_dict(orient="records")}
    if args.sanity and complete:
        report["sanity"] = _sanity(args, image, labels, bundle, out / f"{stem}_sanity.json")
    if verdict is not None:
        report["verdict"] = _write_verdict(verdict, *verdict_paths[:2])
        print(f"gradcamo: {verdict.summary_line()}", file=sys.stderr)
    from napari_gradcamo.io.atomic import write_text

    write_text(verdict_paths[2], json.dumps(report, indent=2, default=float))
    report["summary"] = str(verdict_paths[2])
    print(json.dumps(report, indent=2, default=float))
    if not complete:
        print(f"gradcamo: interrupted: {len(table)} of {len(all_ids)} cells written, marked incomplete in "
              f"{record_path.name}; run the same command with --resume to continue.", file=sys.stderr)
        return 130
    return 0


def _segment(image, settings, masks_out: Path):
    import tifffile

    from napari_gradcamo.io.atomic import write_with
    from napari_gradcamo.segment.cellpose import segment

    bar, update = progress_bar("cellpose")
    bar.unit = "plane"
    try:
        labels = segment(image, settings, progress=update)
    finally:
        bar.close()
    write_with(masks_out, lambda temp: tifffile.imwrite(temp, labels, compression="zlib"))
    return labels


def _previous_rows(parquet: Path, record: dict) -> pd.DataFrame:
    """The finished rows of the interrupted run to continue; refuse when there is none or it differs."""
    if not parquet.exists():
        raise OutputError(f"Nothing to resume: {parquet} does not exist. Run without --resume.")
    unreadable = (f"Cannot resume: {parquet} is damaged or truncated ({{}}); delete it and rerun without --resume, "
                  "or start again with --overwrite.")
    try:
        previous = results.read_run_record(parquet)
    except Exception as error:  # pyarrow's ArrowInvalid ("Parquet magic bytes not found"), bad JSON, …
        raise OutputError(unreadable.format(f"{type(error).__name__}: {error}")) from None
    if previous is None:
        raise OutputError(f"Cannot resume: {parquet.name} has no run record; run again with --overwrite.")
    if previous.get("completed"):
        raise OutputError(f"Nothing to resume: the run that wrote {parquet.name} completed. "
                          "Use --overwrite to audit again.")
    differs = provenance.same_run(previous, record)
    if differs:
        details = provenance.setting_differences(json.loads(json.dumps(previous.get("settings"), default=str)),
                                                 json.loads(json.dumps(record.get("settings"), default=str)))
        raise OutputError(f"Cannot resume: the {', '.join(differs)} differ from the interrupted run's"
                          f"{' (' + '; '.join(details) + ')' if details else ''}; run the same command as before, "
                          "or start again with --overwrite.")
    try:
        return pd.read_parquet(parquet)
    except Exception as error:
        raise OutputError(unreadable.format(f"{type(error).__name__}: {error}")) from None


def _verdict(args, image, labels, bundle, settings):
    """The model's verdict on up to --verdict-sample cells (audit/verdict.py); None when it cannot run here
    (said on stderr)."""
    from napari_gradcamo.audit.verdict import judge

    try:
        return judge(image, labels, bundle, settings=settings, sample=args.verdict_sample)
    except ValueError as error:
        print(f"gradcamo: no verdict: {error}", file=sys.stderr)
        return None


def _write_verdict(verdict, path: Path, cells_path: Path) -> dict:
    """Write the verdict (JSON) and its per-cell evidence (CSV); return the JSON's content with the paths."""
    from napari_gradcamo.io.atomic import write_text, write_with

    content = {**verdict.as_dict(), "file": str(path), "cells_file": str(cells_path)}
    write_text(path, json.dumps(content, indent=2, default=float))
    write_with(cells_path, lambda temp: verdict.cells.to_csv(temp, index=False))
    return content


def _sanity(args, image, labels, bundle, path: Path) -> dict:
    """Cascading randomisation on up to 32 cells; writes ``path`` (JSON), warns on stderr."""
    from napari_gradcamo.audit.sanity import check_image
    from napari_gradcamo.io.atomic import write_text

    checked = check_image(image, labels, bundle, audit_settings(args)).as_dict()
    write_text(path, json.dumps(checked, indent=2))
    for warning in checked["warnings"]:
        print(f"gradcamo: sanity warning: {warning}", file=sys.stderr)
    return {"file": str(path), "passed": checked["passed"], "warnings": len(checked["warnings"])}


def cmd_layers(args) -> int:
    from napari_gradcamo.models.checkpoint import load_checkpoint
    from napari_gradcamo.models.layers import default_target_layer, layer_tree, list_target_layers

    bundle = load_checkpoint(args.model, trusted_factory=args.trust_factory)
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
    p.add_argument("image", help="TIFF / OME-TIFF / .npy image, or an OME-Zarr image (read lazily, crop by crop)")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, or .pt state dict + .json) or a bioimage.io package (.zip, folder, rdf.yaml)")
    p.add_argument("--out", required=True, help="output folder (checked writable before any compute)")
    p.add_argument("--overwrite", action="store_true", help="replace this image's results already in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted audit of this image in --out (same model, image and settings)")
    add_trust_option(p)
    p.add_argument("--axes", default=None, help="image axes, e.g. ZCYX (default: from the file)")
    p.add_argument("--channel-names", default=None, help="comma-separated channel names")
    p.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    seg = p.add_argument_group("masks: give --masks, or segment with cellpose")
    seg.add_argument("--masks", default=None,
                     help="label image (TIFF/.npy, or an OME-Zarr label image) with one id per cell")
    add_segmentation_options(seg)
    add_audit_options(p)
    p.add_argument("--sanity", action="store_true",
                   help="also randomise the model's layers from the top (cascading) and report how much the maps change")
    p.add_argument("--no-verdict", dest="verdict", action="store_false",
                   help="skip the verdict (does the model look at the cells? occlusion + every candidate layer on a "
                        "sample of cells; see docs/interpreting-scores.md)")
    p.add_argument("--verdict-sample", type=positive_int, default=48, metavar="N",
                   help="cells the verdict samples (default 48); '--layer auto' audits at the verdict's layer")
    p.set_defaults(func=cmd_audit, lock_folder="out")


    p = sub.add_parser("layers", help="list a model's candidate target layers (any depth) as a tree with output shapes")
    p.add_argument("model")
    p.add_argument("--find", default=None, help="show only lines containing this text")
    add_trust_option(p)
    p.set_defaults(func=cmd_layers)
