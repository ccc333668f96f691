"""``gradcamo demo``: the whole chain on bundled sample data, offline."""

from __future__ import annotations

import json
from pathlib import Path


def demo_outputs(out: Path) -> list[Path]:
    """Every file ``gradcamo demo --headless`` writes into ``out``."""
    from napari_gradcamo.models.bundled import FIELD_MODELS
    from napari_gradcamo.output.results import table_paths

    tables = [p for name in FIELD_MODELS for p in table_paths(out, f"demo_{name}_gradcamo")]
    return [out / "demo_field.ome.tif", out / "demo_masks.tif", *tables, out / "demo_summary.json"]


def cmd_demo(args) -> int:
    if not args.headless:
        from napari_gradcamo._demo_viewer import open_demo

        return open_demo()
    from napari_gradcamo.demo import run_headless_demo
    from napari_gradcamo.io.atomic import check_writable_folder, refuse_existing
    from napari_gradcamo.io.lock import folder_lock

    with folder_lock(args.out) as out:  # one run per folder, and no silent overwrite (as audit, sweep, train)
        check_writable_folder(out)
        refuse_existing(demo_outputs(out), args.overwrite)
        summary = run_headless_demo(Path(out))
    print(json.dumps(summary, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole chain on bundled sample data, offline")
    p.add_argument("--headless", action="store_true", help="no viewer: write the tables and a summary")
    p.add_argument("--out", default="gradcamo-demo", help="output folder (headless)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier headless demo in --out")
    p.set_defaults(func=cmd_demo)
