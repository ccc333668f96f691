"""How long does the audit dock block napari's main thread? (issue 12; a benchmark, not a test)

Opens a real napari viewer (run it under ``xvfb-run -a``), adds a synthetic 5-stain field with
``--cells`` ellipsoidal cells (default 21×1080×1080, 361 cells: a real-sized 3D Cell Painting field),
loads the bundled ``honest`` demo model in the Grad-CAMO audit dock and audits every cell while a
100 ms ``QTimer`` heartbeat records when the event loop is free. Prints the run time, how many
heartbeats fired against how many were due, and the longest gap between two heartbeats (the
longest main-thread stall), then the five longest gaps. Nothing is asserted.

    xvfb-run -a python benchmarks/gui_stall.py                      # full field
    xvfb-run -a python benchmarks/gui_stall.py --size 540 --cells 90   # a quarter, same density

It only drives the widget's public API (``load_model``, ``set_channel_map``, ``run``, ``job``), so the
same file measures an older checkout of the plugin (``PYTHONPATH=<old>/src``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

STAINS = ("DNA", "ER", "RNA", "AGP", "Mito")


def synthetic_field(size: int, depth: int, n_cells: int, seed: int = 0):
    """Five uint16 stains and a label image with ``n_cells`` ellipsoids on a jittered grid."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((depth, size, size), np.uint32)
    side = int(np.ceil(np.sqrt(n_cells)))
    step = size / side
    radius = max(4.0, 0.32 * step)
    zz, yy, xx = np.ogrid[:depth, -int(radius) - 1 : int(radius) + 2, -int(radius) - 1 : int(radius) + 2]
    rz = max(2.0, depth / 5)
    for i in range(n_cells):
        cy = int((i // side + 0.5) * step + rng.uniform(-0.12, 0.12) * step)
        cx = int((i % side + 0.5) * step + rng.uniform(-0.12, 0.12) * step)
        cz = depth / 2 + rng.uniform(-1, 1)
        ball = ((zz - cz) / rz) ** 2 + (yy / radius) ** 2 + (xx / (radius * rng.uniform(0.8, 1.2))) ** 2 <= 1
        y0, x0 = cy - int(radius) - 1, cx - int(radius) - 1
        ys, xs = slice(max(y0, 0), min(y0 + ball.shape[1], size)), slice(max(x0, 0), min(x0 + ball.shape[2], size))
        sub = ball[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        labels[:, ys, xs][sub] = i + 1
    cells = labels > 0
    stains = []
    for k in range(len(STAINS)):
        img = rng.normal(200, 30, labels.shape).astype(np.float32)
        img[cells] += 400 + 150 * k
        stains.append(np.clip(img, 0, 65535).astype(np.uint16))
    return stains, labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1080, help="y and x size of the field (voxels)")
    parser.add_argument("--depth", type=int, default=21)
    parser.add_argument("--cells", type=int, default=361)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--profile", action="store_true", help="print where the main thread spent its time")
    args = parser.parse_args(argv)
    os.environ.pop("NAPARI_GRADCAMO_SYNC", None)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_gradcamo._qt.audit_widget import AuditWidget
    from napari_gradcamo.models.bundled import bundled_model_path

    t0 = time.perf_counter()
    stains, labels = synthetic_field(args.size, args.depth, args.cells)
    n_cells = len(np.unique(labels)) - 1
    print(f"field {args.depth}×{args.size}×{args.size}, {n_cells} cells, made in {time.perf_counter() - t0:.1f} s")
    viewer = napari.Viewer(show=True)
    for name, data in zip(STAINS, stains):
        viewer.add_image(data, name=name, blending="additive", metadata={"gradcamo_channel": name})
    viewer.add_labels(labels, name="masks")
    widget = AuditWidget(viewer)
    widget.synchronous = False
    viewer.window.add_dock_widget(widget, name="Grad-CAMO audit")
    app = QApplication.instance()
    app.processEvents()
    if not widget.load_model(bundled_model_path("honest")):
        print("could not load the demo model", file=sys.stderr)
        return 1
    widget.set_channel_map(list(range(len(STAINS))))
    widget.batch_size.setValue(args.batch)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)

    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(100)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    beats.append(start)
    if not widget.run():
        print("the run did not start:", widget.panel.status.text(), file=sys.stderr)
        return 1
    while widget.job is not None and widget.job.running and time.perf_counter() - start < args.timeout:
        app.processEvents()
        time.sleep(0.002)
    end = time.perf_counter()
    # let the finishing refresh run, and count it
    settle = end + 1.0
    while time.perf_counter() < settle:
        app.processEvents()
        time.sleep(0.002)
    beats.append(time.perf_counter())
    timer.stop()
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    gaps = np.diff(np.asarray(beats))
    duration = beats[-1] - start
    out = {
        "field": f"{args.depth}x{args.size}x{args.size}",
        "cells": int(n_cells),
        "audit_s": round(end - start, 2),
        "observed_s": round(duration, 2),
        "heartbeats": int(len(beats) - 2),
        "heartbeats_due": int(duration / 0.1),
        "heartbeat_rate_hz": round((len(beats) - 2) / duration, 2),
        "longest_stall_ms": round(1000 * float(gaps.max()), 1),
        "stalls_over_100ms_beyond_tick": int((gaps > 0.2).sum()),
        "top5_gaps_ms": [round(1000 * float(g), 1) for g in np.sort(gaps)[::-1][:5]],
        "status": widget.panel.status.text(),
    }
    for key, value in out.items():
        print(f"{key:32s} {value}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
