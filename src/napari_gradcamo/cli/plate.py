"""``gradcamo plate run | report | synthetic``: a whole plate on dask.distributed, its report, a test plate."""

from __future__ import annotations

import json
from collections import Counter

from napari_gradcamo.cli._common import (
    add_audit_options,
    add_segmentation_options,
    add_trust_option,
    audit_settings,
    check_device,
    positive_int,
    progress_bar,
    segmentation_settings,
)


def cmd_run(args) -> int:
    """Exit 0 when every field is done (or was done before), 1 when some failed (each named on stderr, the
    others kept: rerun the same command to retry only those), 2 for a refused input (nothing started)."""
    import sys

    from napari_gradcamo.plate.report import write_report
    from napari_gradcamo.plate.run import iter_plate

    check_device(args.device)
    settings = audit_settings(args)
    bar, update = progress_bar("fields", unit="field")
    counts, failed, total = Counter(), [], 0
    try:
        # iter_plate refuses a bad model or settings before any worker starts (plate.run.preflight)
        for outcome in iter_plate(args.source, args.model, args.out, settings, layout=args.layout,
                                  segmentation=segmentation_settings(args) if args.segment else None,
                                  workers=args.workers, scheduler=args.scheduler, torch_threads=args.torch_threads,
                                  trusted_factory=args.trust_factory):
            counts[outcome.status] += 1
            counts["cells"] += outcome.cells
            total = outcome.total
            if outcome.status == "failed":
                failed.append(outcome.field)
                bar.write(f"gradcamo: field {outcome.field} failed: {outcome.reason}", file=sys.stderr)
            update(outcome.done, outcome.total, f"{outcome.field} {outcome.status}")
    finally:
        bar.close()
    verdict = None
    if args.verdict_sample > 0 and counts["done"] + counts["skipped"] > 0:
        from napari_gradcamo.models.checkpoint import load_checkpoint
        from napari_gradcamo.plate.verdict import plate_verdict

        verdict = plate_verdict(args.out, load_checkpoint(args.model, trusted_factory=args.trust_factory),
                                sample=args.verdict_sample)
        if verdict is not None:
            print(verdict.summary_line())
    report = write_report(args.out)
    print(json.dumps({"fields_done": counts["done"], "fields_skipped": counts["skipped"], "fields_failed": counts["failed"],
                      "cells_audited_now": counts["cells"], "report": str(report), "failed": failed}, indent=2))
    finished = counts["done"] + counts["skipped"]
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        print(f"gradcamo: {finished} of {total} fields done; {len(failed)} failed: {shown} (reasons above and in "
              f"{report.name}); fix them and rerun the same command: finished fields are kept and skipped.",
              file=sys.stderr)
        return 1
    print(f"gradcamo: {finished} of {total} fields done.", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from napari_gradcamo.plate.report import write_report

    print(write_report(args.out))
    return 0


def cmd_synthetic(args) -> int:
    from napari_gradcamo.plate.synthetic import write_synthetic_plate

    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else None
    plate, layout = write_synthetic_plate(args.out, args.fields, sites_per_well=args.sites, scenario=args.scenario,
                                          seed=args.seed, n_cells=args.cells, shape=shape)
    print(json.dumps({"plate": str(plate), "layout": str(layout)}))
    return 0


def register(sub) -> None:
    plate = sub.add_parser("plate", help="audit a whole plate on dask.distributed; report; synthetic test plate")
    commands = plate.add_subparsers(dest="plate_command", required=True)

    p = commands.add_parser("run", help="audit every field (resumable) and write the plate table and report",
                            epilog="Exit status: 0 all fields done; 1 some fields failed (each named on stderr with "
                                   "its reason, the others kept; rerun the same command to retry only those); "
                                   "2 refused before any work started (bad option, model or source).")
    p.add_argument("source", help="manifest CSV, folder of fields (PLATE_WELL_sSITE.ome.tif/.ome.zarr), or OME-Zarr plate")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, or .pt state dict + .json) or a bioimage.io package (.zip, folder, rdf.yaml)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.add_argument("--layout", default=None, help="CSV: well[,plate],treatment,dose")
    p.add_argument("--workers", type=positive_int, default=None, help="local dask workers (default: one per CPU core)")
    p.add_argument("--scheduler", default=None, help="address of a running dask scheduler (e.g. from dask-jobqueue)")
    p.add_argument("--torch-threads", type=positive_int, default=1, help="torch threads per worker")
    p.add_argument("--verdict-sample", type=int, default=48,
                   help="cells (drawn over up to 8 fields) the model-level verdict is judged on at the end of the "
                        "run (cell and context hidden, every candidate layer); 0: no verdict (default 48)")
    add_trust_option(p)
    seg = p.add_argument_group("masks: from the manifest / beside each field / the OME-Zarr labels, or cellpose")
    seg.add_argument("--segment", action="store_true", help="segment fields that have no masks with cellpose")
    add_segmentation_options(seg)
    add_audit_options(p)
    p.set_defaults(func=cmd_run, lock_folder="out")

    p = commands.add_parser("report", help="rebuild the plate table and HTML report of a run folder")
    p.add_argument("out", help="the --out folder of 'gradcamo plate run'")
    p.set_defaults(func=cmd_report, lock_folder="out")

    p = commands.add_parser("synthetic", help="write a synthetic OME-Zarr HCS plate and its layout CSV")
    p.add_argument("out")
    p.add_argument("--fields", type=positive_int, default=48)
    p.add_argument("--sites", type=positive_int, default=4, help="sites per well")
    p.add_argument("--cells", type=positive_int, default=12, help="cells per field")
    p.add_argument("--shape", default=None, help="field shape z,y,x (default 12,64,64)")
    p.add_argument("--scenario", choices=("honest", "shortcut"), default="honest")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_synthetic)
