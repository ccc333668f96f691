#!/usr/bin/env python
"""Peak memory of auditing a real-sized field, and where it goes (issue 25).

    python benchmarks/memory.py                      # demo model and EfficientNet-B0 3D, dense and sparse ids
    python benchmarks/memory.py --models demo --size 540   # smaller, faster

A seeded 5 × 21 × SIZE × SIZE uint16 field with ~361 ellipsoidal cells (benchmarks/gui_stall.py's generator) is
written as TIFF files; each configuration then runs in a fresh process that reads the files, locates the cells
and audits every cell as ``gradcamo audit`` does, printing the resident memory (VmRSS) after each step and the
process's peak (VmHWM). Sparse ids: the same cells numbered up to 2**31 - 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
def rss():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":"); out[k] = int(v.split()[0]) / 1024
    return out
steps = []
def mark(name):
    steps.append({"step": name, "rss_mb": rss()["VmRSS"], "peak_mb": rss()["VmHWM"], "t": time.perf_counter()})
mark("python")
import numpy as np, torch
import napari_gradcamo
from napari_gradcamo.audit.run import AuditSettings, iter_audit
from napari_gradcamo.io.images import read_image, read_labels
torch.set_num_threads(2)
mark("imports (numpy, torch, napari_gradcamo)")
cfg = json.loads(sys.argv[1])
image = read_image(cfg["image"], "CZYX", ["DNA", "ER", "RNA", "AGP", "Mito"])
mark("image read")
labels = read_labels(cfg["labels"])
mark("labels read")
if cfg["model"] == "demo":
    from napari_gradcamo.models.bundled import load_demo_model
    bundle = load_demo_model("shortcut")
else:
    sys.path.insert(0, cfg["bench"])
    from audit_bench.workloads import make_bundle
    bundle = make_bundle("efficientnet-b0")
mark("model loaded")
cells = 0
for i, batch in enumerate(iter_audit(image, labels, bundle, AuditSettings(device="cpu"))):
    cells = batch.done
    if i == 0:
        mark("first batch (cell table, target layer, one batch)")
    if cells >= cfg["max_cells"]:
        break
mark(f"audit of {cells} cells")
print("RESULT " + json.dumps({"steps": steps, "cells": cells}))
"""


def make_files(directory: Path, size: int, sparse: bool) -> dict:
    import numpy as np
    import tifffile

    sys.path.insert(0, str(Path(__file__).parent))
    from gui_stall import synthetic_field

    stains, labels = synthetic_field(size, 21, 361)
    if sparse:  # the same cells, ids spread up to 2**31 - 1
        ids = np.unique(labels)[1:]
        spread = np.linspace(1, 2**31 - 1, len(ids)).astype(np.int64)
        lut = np.zeros(int(labels.max()) + 1, np.int64)
        lut[ids] = spread
        labels = lut[labels].astype(np.uint32)
    tifffile.imwrite(directory / "image.tif", np.stack(stains))
    tifffile.imwrite(directory / "labels.tif", labels)
    return {"image": str(directory / "image.tif"), "labels": str(directory / "labels.tif"),
            "max_id": int(labels.max()), "cells": int(len(np.unique(labels)) - 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,b0")
    ap.add_argument("--size", type=int, default=1080)
    ap.add_argument("--max-cells", type=int, default=10**9, help="stop the audit after this many cells")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gradcamo-mem-") as tmp:
        for sparse in (False, True):
            d = Path(tmp) / ("sparse" if sparse else "dense")
            d.mkdir()
            files = make_files(d, args.size, sparse)
            for model in [m for m in args.models.split(",") if m]:
                cfg = dict(files, model=model, max_cells=args.max_cells, bench=str(Path(__file__).parent))
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    print(f"{model} ({'sparse' if sparse else 'dense'} ids): ERROR {proc.stderr[-500:]}")
                    rows.append({"model": model, "sparse": sparse, "error": proc.stderr[-500:]})
                    continue
                res = json.loads(line[0][7:])
                rows.append({"model": model, "sparse": sparse, "max_id": files["max_id"], **res,
                             "wall_s": time.perf_counter() - t0})
    print(f"field 5 x 21 x {args.size} x {args.size} uint16, {rows[0].get('steps') and files['cells']} cells")
    for r in rows:
        if "error" in r:
            continue
        print(f"\n{r['model']}, {'sparse' if r['sparse'] else 'dense'} ids (largest {r['max_id']}), "
              f"{r['cells']} cells audited, {r['wall_s']:.0f} s")
        for s in r["steps"]:
            print(f"  {s['step']:52} RSS {s['rss_mb']:7.0f} MB   peak so far {s['peak_mb']:7.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
