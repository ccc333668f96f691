"""How long does each user action block napari's main thread? (issues 12 and 24; a benchmark, not a test)

Opens a real napari viewer (run it under ``xvfb-run -a``) SIZED to a screen (``--window``, default
1366x768 and 1920x1080; napari's own first window is 1089 × 710), adds a synthetic 5-stain field with
``--cells`` ellipsoidal cells (default 21×1080×1080, 361 cells: a real-sized 3D Cell Painting field) and
does what a person does, in turn: open the audit dock from the plugin menu, load the bundled ``honest``
model, audit every cell, sort the table (two header clicks), click 5 rows 0.6 s apart, erase a hole in a
cell (the dock rescores it with its cached map), delete a cell, Save audit…, reopen the saved folder,
export the flagged cells, and audit with a second model in Compare models. A ``QTimer`` heartbeat every
10 ms records when the event loop is free; a gap between two beats is a main-thread stall. Per action it
prints the longest stall and how many passed 100 ms (and the action's seconds end to end), for each of
``--runs`` runs (a fresh viewer each), with the load average before each run. Nothing is asserted.

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/gui_stall.py           # 3 runs × 2 windows
    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/gui_stall.py --quick   # 540², 90 cells, 1 run
    xvfb-run -a python benchmarks/gui_stall.py --size 540 --cells 90 --ndisplay 3 --where 5   # 3D view; and
                                             # what the main thread ran in each action's 5 longest stalls

Not timed here: segmentation (cellpose weights and minutes of CPU) and the Profiles dock.
It drives the docks' public API, so the same file measures an older checkout (``PYTHONPATH=<old>/src``).
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


ACTIONS = ("open dock", "load model", "run", "sort", "click rows", "paint + rescore", "delete", "save",
           "reopen", "export", "compare")


class Heart:
    """A 10 ms QTimer heartbeat; :meth:`measure` runs an action and returns its stalls."""

    def __init__(self, app):
        from qtpy.QtCore import Qt, QTimer

        self.app = app
        self.beats: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(lambda: self.beats.append(time.perf_counter()))
        self.timer.start()

    def spin(self, seconds: float) -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            self.app.processEvents()
            time.sleep(0.002)

    def wait(self, done, timeout: float) -> None:
        start = time.perf_counter()
        while not done() and time.perf_counter() - start < timeout:
            self.app.processEvents()
            time.sleep(0.002)

    def measure(self, action, settle: float = 0.5) -> dict:
        """Run ``action()`` (it returns once the work it started has ended) and ``settle`` s more."""
        self.beats.clear()
        start = time.perf_counter()
        self.beats.append(start)
        action()
        took = time.perf_counter() - start
        self.spin(settle)
        self.beats.append(time.perf_counter())
        numbers = phase_numbers(sorted(self.beats))
        numbers["action_s"] = round(took, 2)
        self.last_beats = sorted(self.beats)
        return numbers


def one_run(args, window: tuple[int, int], stains, labels, workdir: str) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_gradcamo.audit import labels_features
    from napari_gradcamo.models.bundled import bundled_model_path

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    heart = Heart(app)
    for _ in range(2):
        viewer.window.resize(*window)
        heart.spin(0.3)
    for name, data in zip(STAINS, stains):
        viewer.add_image(data, name=name, blending="additive", metadata={"gradcamo_channel": name})
    masks = viewer.add_labels(labels, name="masks")
    viewer.dims.ndisplay = args.ndisplay
    heart.spin(1.0)
    out: dict = {}
    state: dict = {}
    beats_of: dict = {}
    real_measure = heart.measure

    def measure(action, settle: float = 0.5):
        numbers = real_measure(action, settle)
        beats_of[action.__name__] = heart.last_beats
        return numbers

    heart.measure = measure

    def idle(widget):
        return lambda: not widget.busy

    def open_dock():
        _, state["w"] = viewer.window.add_plugin_dock_widget("napari-gradcamo", "Grad-CAMO audit")
        state["w"].synchronous = False
    out["open dock"] = heart.measure(open_dock, 1.0)
    w = state["w"]

    def load():
        w.load_model(bundled_model_path("honest"), background=True)  # as the Checkpoint combo does
        heart.wait(lambda: not w.model_panel.loading, args.timeout)
        w.set_channel_map(list(range(len(STAINS))))
        w.batch_size.setValue(args.batch)
    out["load model"] = heart.measure(load, args.think)

    def run():
        w.run()
        heart.wait(idle(w), args.timeout)
    out["run"] = heart.measure(run, 1.0)
    out["run"]["status"] = w.panel.status.text()

    def sort():
        column = w.table.model.columns.index("gradcamo")
        header = w.table.view.horizontalHeader()
        for _ in range(2):
            header.sectionClicked.emit(column)
            w.table.view.sortByColumn(column, header.sortIndicatorOrder())
            heart.spin(0.3)
    out["sort"] = heart.measure(sort)
    table = w.features()
    audited = table[table["status"] == "audited"]["label"].tolist()

    def click_rows():
        for label in audited[:5]:
            w.table.label_selected.emit(int(label))
            heart.spin(0.6)
    out["click rows"] = heart.measure(click_rows)

    target = int(audited[len(audited) // 2])
    zz, yy, xx = np.nonzero(labels == target)
    k = len(zz) // 2

    def paint():
        before = labels_features.row_of(w.features(), target)["volume_voxels"]
        masks.brush_size = 3
        masks.paint((int(zz[k]), int(yy[k]), int(xx[k])), 0)
        heart.wait(lambda: labels_features.row_of(w.features(), target)["volume_voxels"] != before, 60)
    out["paint + rescore"] = heart.measure(paint)
    out["paint + rescore"]["note"] = w.panel.status.text()[:80]

    victim = int(audited[-1])

    def delete():
        w.table.select_label(victim)
        w.delete_selected_cells()
        heart.wait(lambda: victim not in set(w.features()["label"]) and not w.editing, 60)
    out["delete"] = heart.measure(delete)

    folder = os.path.join(workdir, f"saved-{window[0]}-{time.time_ns()}")

    def save():
        w.save_results(folder)
        heart.wait(lambda: not w.busy and os.path.isdir(folder), args.timeout)
    out["save"] = heart.measure(save)

    def reopen():
        viewer.open(folder, plugin="napari-gradcamo")
    out["reopen"] = heart.measure(reopen, 1.0)
    w.labels_picker.set_layer(masks)

    def export():
        w.export_to(os.path.join(workdir, f"export-{window[0]}-{time.time_ns()}"))
        heart.wait(lambda: not w.busy, args.timeout)
    out["export"] = heart.measure(export)

    def compare():
        _, c = viewer.window.add_plugin_dock_widget("napari-gradcamo", "Compare models")
        c.panel.synchronous = False
        c.labels_picker.set_layer(masks)
        c.model_b.load_model(bundled_model_path("shortcut"), background=True)
        heart.wait(lambda: not c.model_b.loading, args.timeout)
        c.model_b.set_channel_map(list(range(len(STAINS))))
        c.run()
        heart.wait(lambda: not c.panel.running, args.timeout)
    out["compare"] = heart.measure(compare, 1.0)
    heart.timer.stop()
    viewer.close()
    out["_beats"] = beats_of
    return out


def main(argv=None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1080, help="y and x size of the field (voxels)")
    parser.add_argument("--depth", type=int, default=21)
    parser.add_argument("--cells", type=int, default=361)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", default="1366x768,1920x1080", help="window sizes, comma-separated WxH")
    parser.add_argument("--quick", action="store_true", help="540×540 field, 90 cells, one run")
    parser.add_argument("--think", type=float, default=2.0, help="seconds after loading the model")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for an action after this")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--ndisplay", type=int, default=2, choices=(2, 3), help="2D slice view or 3D rendering")
    parser.add_argument("--where", type=int, default=0, metavar="N",
                        help="sample the main thread's stack every 2 ms and print what it ran in the N longest "
                             "stalls of each action")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.cells, args.runs = 540, 90, 1
    os.environ.pop("NAPARI_GRADCAMO_SYNC", None)
    windows = [tuple(int(v) for v in w.split("x")) for w in args.window.split(",")]
    stains, labels = synthetic_field(args.size, args.depth, args.cells)
    print(f"field {args.depth}×{args.size}×{args.size}, {len(np.unique(labels)) - 1} cells")
    results = []
    with tempfile.TemporaryDirectory(prefix="gui_stall-") as workdir:
        for window in windows:
            for run in range(args.runs):
                load = os.getloadavg()
                sampler = StackSampler() if args.where else None
                numbers = one_run(args, window, stains, labels.copy(), workdir)
                beats_of = numbers.pop("_beats")
                if sampler is not None:
                    sampler.stop()
                    for name, beats in beats_of.items():
                        print(f"\n===== {name}")
                        sampler.print_stalls(beats, args.where)
                results.append({"window": f"{window[0]}x{window[1]}", "run": run + 1,
                                "loadavg": [round(v, 2) for v in load], "actions": numbers})
                print(f"\n== window {window[0]}×{window[1]}, run {run + 1}, load average {load[0]:.2f} "
                      f"{load[1]:.2f} {load[2]:.2f}")
                print(f"{'action':18s} {'longest stall ms':>17s} {'stalls > 100 ms':>16s} {'action s':>9s}")
                for name in ACTIONS:
                    n = numbers.get(name)
                    if n:
                        print(f"{name:18s} {n['longest_stall_ms']:17.0f} {n['stalls_over_100ms']:16d} "
                              f"{n['action_s']:9.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
