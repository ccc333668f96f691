"""How long does the audit dock block napari's main thread? (issue 12; a benchmark, not a test)

Opens a real napari viewer (run it under ``xvfb-run -a``), adds a synthetic 5-stain field with
``--cells`` ellipsoidal cells (default 21×1080×1080, 361 cells: a real-sized 3D Cell Painting field),
loads the bundled ``honest`` demo model in the Grad-CAMO audit dock, waits ``--think`` seconds (a person
reading the dock before pressing Run), and audits every cell. A ``QTimer`` heartbeat every 10 ms
records when the event loop is free; a gap between two beats is a main-thread stall. For each phase
(*load*: loading the model and the think time; *audit*: from Run until one second after the run ended)
it prints the heartbeat rate (100 Hz when never blocked), the longest stall, how many stalls passed
100 ms, and the five longest. Nothing is asserted.

    xvfb-run -a python benchmarks/gui_stall.py                      # full field
    xvfb-run -a python benchmarks/gui_stall.py --size 540 --cells 90   # a quarter, same density
    xvfb-run -a python benchmarks/gui_stall.py --where 5            # and what the main thread ran then

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


class StackSampler:
    """Samples every thread's Python stack every ``interval`` s from a helper thread.

    A sample that comes much later than asked means some thread held the GIL: the main thread could not
    run Python either. The stacks of the other threads at that moment say which.
    """

    def __init__(self, interval: float = 0.002):
        import threading

        self.interval = interval
        self.main_id = threading.main_thread().ident
        self.own_id = None
        self.samples: list[tuple[float, float, dict]] = []  # (time, wait since the previous sample, stacks)
        self._running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def _stack(frame) -> tuple[str, ...]:
        stack = []
        while frame is not None:
            code = frame.f_code
            where = code.co_filename.split("site-packages/")[-1].split("src/")[-1]
            stack.append(f"{where}:{frame.f_lineno} {code.co_name}")
            frame = frame.f_back
        return tuple(reversed(stack))

    def _sample(self) -> None:
        import threading

        self.own_id = threading.get_ident()
        last = time.perf_counter()
        while self._running:
            now = time.perf_counter()
            frames = sys._current_frames()
            stacks = {tid: self._stack(f) for tid, f in frames.items() if tid != self.own_id}
            self.samples.append((now, now - last, stacks))
            last = now
            time.sleep(self.interval)

    def stop(self) -> None:
        self._running = False
        self.thread.join()

    def _common(self, stacks: list, depth: int) -> list[str]:
        from collections import Counter

        counts: Counter = Counter(frame for stack in stacks for frame in set(stack))
        depth_of: dict = {}
        for stack in stacks:
            for k, frame in enumerate(stack):
                depth_of.setdefault(frame, k)
        common = [f for f, c in counts.items() if c >= 0.2 * len(stacks)]
        return [f"  {100 * counts[f] / len(stacks):5.0f}%  {f}" for f in sorted(common, key=depth_of.get)[-depth:]]

    def print_stalls(self, beats: list[float], n: int, depth: int = 10) -> None:
        """For the ``n`` longest gaps: the main thread's frames seen in at least a fifth of the samples, and
        the time the sampler itself waited for the GIL, with what the other threads ran then."""
        beats_arr = np.asarray(beats)
        gaps = np.diff(beats_arr)
        for i in np.argsort(gaps)[::-1][:n]:
            t0, t1 = beats_arr[i], beats_arr[i + 1]
            inside = [(wait, stacks) for t, wait, stacks in self.samples if t0 <= t <= t1]
            starved = [(wait, stacks) for wait, stacks in inside if wait > 0.02]
            print(f"\n--- stall {1000 * gaps[i]:.0f} ms at +{t0 - beats_arr[0]:.1f} s: {len(inside)} samples, "
                  f"{1000 * sum(w for w, _ in starved):.0f} ms of them waiting for the GIL")
            print("main thread:")
            print("\n".join(self._common([s.get(self.main_id, ()) for _, s in inside], depth)))
            for wait, stacks in sorted(starved, key=lambda x: -x[0])[:3]:
                print(f" GIL held for {1000 * wait:.0f} ms; other threads then:")
                for tid, stack in stacks.items():
                    if tid != self.main_id and stack:
                        print("    " + " > ".join(stack[-4:]))


HEARTBEAT_MS = 10


def phase_numbers(beats: list[float]) -> dict:
    """Heartbeat rate and stalls (gaps between beats) of one phase."""
    gaps = np.diff(np.asarray(beats))
    duration = beats[-1] - beats[0]
    return {
        "seconds": round(duration, 2),
        "heartbeat_hz": round((len(beats) - 1) / duration, 1) if duration > 0 else 0.0,
        "longest_stall_ms": round(1000 * float(gaps.max()), 1) if gaps.size else 0.0,
        "stalls_over_100ms": int((gaps > 0.1).sum()),
        "top5_stalls_ms": [round(1000 * float(g), 1) for g in np.sort(gaps)[::-1][:5]],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1080, help="y and x size of the field (voxels)")
    parser.add_argument("--depth", type=int, default=21)
    parser.add_argument("--cells", type=int, default=361)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ndisplay", type=int, default=2, choices=(2, 3), help="2D slice view or 3D rendering")
    parser.add_argument("--think", type=float, default=3.0, help="seconds between loading the model and Run")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--where", type=int, default=0, metavar="N",
                        help="sample the main thread's stack every 2 ms and print what it ran in the N longest stalls")
    args = parser.parse_args(argv)
    os.environ.pop("NAPARI_GRADCAMO_SYNC", None)

    import napari
    from qtpy.QtCore import Qt, QTimer
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
    viewer.dims.ndisplay = args.ndisplay
    widget = AuditWidget(viewer)
    widget.synchronous = False
    viewer.window.add_dock_widget(widget, name="Grad-CAMO audit")
    app = QApplication.instance()

    def spin(seconds: float) -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            app.processEvents()
            time.sleep(0.002)

    spin(1.0)
    beats: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    sampler = StackSampler() if args.where else None

    beats.append(time.perf_counter())
    if not widget.load_model(bundled_model_path("honest")):
        print("could not load the demo model", file=sys.stderr)
        return 1
    widget.set_channel_map(list(range(len(STAINS))))
    widget.batch_size.setValue(args.batch)
    spin(args.think)
    beats.append(time.perf_counter())
    load_beats = list(beats)

    beats.clear()
    start = time.perf_counter()
    beats.append(start)
    if not widget.run():
        print("the run did not start:", widget.panel.status.text(), file=sys.stderr)
        return 1
    while widget.job is not None and widget.job.running and time.perf_counter() - start < args.timeout:
        app.processEvents()
        time.sleep(0.002)
    end = time.perf_counter()
    spin(1.0)  # the finishing refresh runs, and counts
    beats.append(time.perf_counter())
    timer.stop()
    audit_beats = list(beats)
    out = {
        "field": f"{args.depth}x{args.size}x{args.size}",
        "cells": int(n_cells),
        "ndisplay": args.ndisplay,
        "audit_s": round(end - start, 2),
        "load": phase_numbers(load_beats),
        "audit": phase_numbers(audit_beats),
        "status": widget.panel.status.text(),
    }
    if sampler is not None:
        sampler.stop()
        for name, phase in (("load", load_beats), ("audit", audit_beats)):
            print(f"\n===== {name}")
            sampler.print_stalls(phase, args.where)
    print()
    for key, value in out.items():
        if isinstance(value, dict):
            for k, v in value.items():
                print(f"{key + ' ' + k:32s} {v}")
        else:
            print(f"{key:32s} {value}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
