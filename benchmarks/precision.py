#!/usr/bin/env python
"""Reduced-precision audit (issue 25): time and the change in every score against fp32.

    python benchmarks/precision.py                 # demo field (both bundled models) + a real-sized field
    python benchmarks/precision.py --no-large      # demo field only (~1 min)

For each field and model the same cells are audited with ``precision="fp32"`` and ``"bf16"`` (and ``"fp16"``
on CUDA), alternately, 2 threads; printed per precision: wall time of the audit, speed-up over fp32, and the
median and maximum absolute change of gradcamo / normalised over all cells, plus how many flags changed.
bf16 is fast only where the CPU has AMX or AVX512-BF16 (printed) or on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def cpu_bf16() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    have = [f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in flags]
    return ", ".join(have) or "none"


def audit_both(image, labels, bundle, precisions, device, cells):
    import numpy as np

    from napari_gradcamo.audit.run import AuditSettings, run_audit

    out = {}
    labels_wanted = sorted(int(v) for v in np.unique(labels) if v)[:cells]
    for p in precisions:  # warm-up (oneDNN primitives for each precision)
        run_audit(image, labels, bundle, AuditSettings(precision=p, device=device), only_labels=labels_wanted[:8])
    for p in precisions:
        t0 = time.perf_counter()
        r = run_audit(image, labels, bundle, AuditSettings(precision=p, device=device), only_labels=labels_wanted)
        out[p] = (time.perf_counter() - t0, r.table.set_index("label"))
    ref_t, ref = out["fp32"]
    rows = []
    for p, (t, table) in out.items():
        row = {"precision": p, "seconds": t, "speedup": ref_t / t, "cells": len(table)}
        for col in ("gradcamo", "normalised"):
            d = (table[col] - ref[col]).abs().dropna()
            row[f"{col}_median_abs_change"] = float(d.median()) if len(d) else None
            row[f"{col}_max_abs_change"] = float(d.max()) if len(d) else None
        row["flags_changed"] = int((table["flagged"] != ref["flagged"]).sum())
        rows.append(row)
    return rows


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-large", action="store_true", help="skip the real-sized field")
    ap.add_argument("--cells", type=int, default=96, help="cells audited on the real-sized field")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    from napari_gradcamo.io.images import make_image
    from napari_gradcamo.models.bundled import load_demo_model
    from napari_gradcamo.synthetic.experiment import demo_field

    print(f"device {device}; CPU bf16 instructions: {cpu_bf16()}; torch {torch.__version__}")
    results = []
    field = demo_field()
    for name in ("shortcut", "honest"):
        for r in audit_both(field.image, field.labels, load_demo_model(name), precisions, args.device, 10**6):
            results.append({"field": "demo", "model": name, **r})
    if not args.no_large:
        sys.path.insert(0, str(Path(__file__).parent))
        from gui_stall import STAINS, synthetic_field

        stains, labels = synthetic_field(1080, 21, 361)
        import numpy as np

        image = make_image(np.stack(stains), "CZYX", list(STAINS))
        for r in audit_both(image, labels, load_demo_model("shortcut"), precisions, args.device, args.cells):
            results.append({"field": "5x21x1080x1080", "model": "shortcut", **r})
    print(f"{'field':16} {'model':9} {'prec':5} {'cells':>5} {'s':>7} {'speed-up':>8} {'gradcamo med/max |Δ|':>22} "
          f"{'normalised med/max |Δ|':>24} {'flags changed':>13}")
    for r in results:
        print(f"{r['field']:16} {r['model']:9} {r['precision']:5} {r['cells']:5d} {r['seconds']:7.2f} {r['speedup']:8.2f} "
              f"{r['gradcamo_median_abs_change']:10.2e}/{r['gradcamo_max_abs_change']:9.2e} "
              f"{r['normalised_median_abs_change']:12.2e}/{r['normalised_max_abs_change']:9.2e} {r['flags_changed']:13d}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
