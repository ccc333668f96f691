"""``gradcamo demo``: the whole chain on bundled sample data, offline."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_demo(args) -> int:
    if not args.headless:
        from napari_gradcamo._demo_viewer import open_demo

        return open_demo()
    from napari_gradcamo.demo import run_headless_demo

    summary = run_headless_demo(Path(args.out))
    print(json.dumps(summary, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole chain on bundled sample data, offline")
    p.add_argument("--headless", action="store_true", help="no viewer: write the tables and a summary")
    p.add_argument("--out", default="gradcamo-demo", help="output folder (headless)")
    p.set_defaults(func=cmd_demo)
