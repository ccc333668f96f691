"""Interactive figures: rescoring, table building, and the Qt widget's click and table timings."""

from __future__ import annotations

import os
import time
from pathlib import Path

from audit_bench.config import CLASSES, SMALL
from audit_bench.measure import set_threads
from audit_bench.workloads import load, make_bundle


def interactive(cfg: dict) -> dict:
    import numpy as np
    import pandas as pd

    set_threads(cfg["threads"])
    from napari_gradcamo.audit.run import AuditSettings, CellCam, iter_audit, rescore
    from napari_gradcamo.output import results

    image, labels = load(Path(cfg["data"]))
    bundle = make_bundle(SMALL)
    cams: dict[int, CellCam] = {}
    rows = []
    first = [c for c in np.unique(labels) if c][: cfg["batch"]]
    for batch in iter_audit(image, labels, bundle, AuditSettings(device="cpu", batch_size=cfg["batch"]), only_labels=first):
        cams.update(batch.cams)
        rows.append(batch.rows)
    out: dict = {}

    def ms(fn, n=15):
        fn()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times)), 1e3 * float(np.max(times))

    cam = next(iter(cams.values()))
    out["cam_on_crop_grid_ms"] = ms(cam.on_crop_grid)
    edited = labels.copy()
    edited[edited == cam.label] = 0  # the mask edit is done by the user; rescore is what we time
    z, y, x = (int(v) for v in np.argwhere(labels == cam.label).mean(0))
    edited[max(z - 3, 0) : z + 3, max(y - 8, 0) : y + 8, max(x - 8, 0) : x + 8] = cam.label
    out["rescore_one_cell_ms"] = ms(lambda: rescore(cam, edited))

    # a 10 000-row table built like the audit builds it
    template = pd.concat(rows, ignore_index=True)
    rng = np.random.default_rng(0)
    n = 10_000
    records = template.sample(n, replace=True, random_state=0).reset_index(drop=True)
    records["label"] = np.arange(1, n + 1)
    records["gradcamo"] = rng.random(n)
    records = records.drop(columns=["flagged"]).to_dict("records")
    names = bundle.metadata.class_names

    def build():
        return results.apply_threshold(results.conform(pd.DataFrame.from_records(records), names), 0.5)

    out["table_10000_build_ms"] = ms(build, 7)
    table = build()
    out["table_10000_sort_ms"] = ms(lambda: table.sort_values("gradcamo", kind="stable"), 15)
    out["table_10000_rethreshold_ms"] = ms(lambda: results.apply_threshold(table, 0.3), 15)
    return out


def qt_figures(cfg: dict) -> dict:
    """Qt-side figures of the plugin (needs a display: run under ``xvfb-run -a``).

    click → Grad-CAM layer: ``AuditWidget.select_label`` on an audited cell (row selected, cell's map
    upsampled and shown as a layer) plus the event-loop turn that draws it; table: populating the
    results table with 10 000 rows and sorting it by Grad-CAMO.
    """
    import numpy as np
    import pandas as pd

    set_threads(cfg["threads"])
    out: dict = {}
    try:
        import napari
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QApplication

        from napari_gradcamo._qt import AuditWidget
        from napari_gradcamo._qt.table import ResultsTable
        from napari_gradcamo._sample_data import field_layers
        from napari_gradcamo.audit import labels_features
        from napari_gradcamo.models.checkpoint import save_checkpoint
        from napari_gradcamo.synthetic.generator import generate_field
    except Exception as error:
        return {"status": f"not measured: {type(error).__name__}: {error}"[:300]}

    def ms(fn, n=9, setup=None):
        times = []
        for i in range(n + 1):
            if setup:
                setup(i)
            t = time.perf_counter()
            fn(i)
            QApplication.processEvents()
            if i:  # the first call warms caches
                times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times)), 1e3 * float(np.max(times))

    try:
        viewer = napari.Viewer(show=True)
        field = generate_field(1, shape=(24, 192, 192), n_cells=12, n_classes=len(CLASSES), treatment=1)
        for data, kw, kind in field_layers(field):
            getattr(viewer, f"add_{kind}")(data, **kw)
        bundle = make_bundle(SMALL)
        ckpt = Path(cfg["data"]) / "small.safetensors"
        save_checkpoint(ckpt, bundle.model, bundle.metadata)
        widget = AuditWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.synchronous = True
        if not widget.load_model(ckpt):
            raise RuntimeError("the widget refused the benchmark checkpoint")
        t = time.perf_counter()
        widget.run()
        QApplication.processEvents()
        out["audit_in_plugin_s"] = time.perf_counter() - t
        labels = sorted(widget.cams())
        out["audited_cells"] = len(labels)
        if len(labels) < 2:
            raise RuntimeError(f"only {len(labels)} cells audited in the plugin")
        out["click_to_cam_layer_ms"] = ms(lambda i: widget.select_label(labels[i % len(labels)], center=False))
        viewer.close()
    except Exception as error:  # the Qt code is built in parallel; report instead of failing the run
        out["click_to_cam_layer_ms"] = f"not measured: {type(error).__name__}: {error}"[:300]

    try:
        rng = np.random.default_rng(0)
        n = 10_000
        names = ["control", "dose1", "dose2"]
        table = pd.DataFrame({
            "label": np.arange(1, n + 1), "centroid_z": rng.random(n) * 20, "centroid_y": rng.random(n) * 2000,
            "centroid_x": rng.random(n) * 2000, "volume_voxels": rng.integers(100, 5000, n),
            "predicted_class": rng.choice(names, n), "probability": rng.random(n),
            **{f"prob_{c}": rng.random(n) for c in names}, "target_class": "control",
            "gradcamo": rng.random(n), "chance": rng.random(n) * 0.1, "status": "audited",
        })
        table = labels_features.reflag(labels_features.ensure_schema(table, names), 0.3)
        colors = labels_features.label_colors(table, "flag")
        widget = ResultsTable()
        widget.resize(700, 500)
        widget.show()
        out["table_10000_populate_ms"] = ms(lambda i: widget.set_table(table, colors), 5)
        column = widget.model.columns.index("gradcamo")
        order = [Qt.SortOrder.DescendingOrder, Qt.SortOrder.AscendingOrder]
        out["table_10000_sort_ms"] = ms(lambda i: widget.view.sortByColumn(column, order[i % 2]), 6)
        widget.close()
    except Exception as error:
        out["table_10000_populate_ms"] = f"not measured: {type(error).__name__}: {error}"[:300]
    return out


def qt_command() -> list[str] | None:
    import shutil

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return []
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a"]
    return None
