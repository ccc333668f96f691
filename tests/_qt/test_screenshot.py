"""The demo as a user runs it (threaded, CPU), and the screenshot of the finished audit for the README."""

import time

import numpy as np
import pytest

from napari_gradcamo.output import results


@pytest.mark.screenshot
def test_demo_audit_in_the_gui_and_screenshot(make_napari_viewer, qtbot, plugin_checkpoint, screenshot_dir):
    from napari_gradcamo._demo_viewer import build_demo
    from napari_gradcamo.models.bundled import bundled_models

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    model = "shortcut" if "shortcut" in bundled_models() else str(plugin_checkpoint)
    widget = build_demo(viewer, model=model)
    qtbot.wait(100)
    viewer.reset_view()
    widget.synchronous = False
    labels = widget.labels_layer
    n_cells = int(labels.data.max())
    start = time.perf_counter()
    assert widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=300_000)
    seconds = time.perf_counter() - start
    table = widget.features()
    assert (table["status"] == results.STATUS_AUDITED).sum() == n_cells
    print(f"\nGUI audit of the demo field ({n_cells} cells, model {model}): {seconds:.1f} s "
          f"({seconds / n_cells:.2f} s/cell); {widget.panel.status.text()}")

    # show the worst cell: its row, its Grad-CAM over the masks, the legend
    inner = table[~table["touches_border"]] if (~table["touches_border"]).any() else table
    worst = int(inner.sort_values("gradcamo").iloc[0]["label"])
    widget.select_label(worst, center=True)
    cam_layer = widget.cell_cam_layer()
    assert cam_layer is not None and cam_layer.metadata["label"] == worst
    for layer in viewer.layers:
        if layer.name in ("ER", "RNA", "Mito"):
            layer.visible = False
    qtbot.wait(200)
    path = screenshot_dir / "screenshot_audit.png"
    shot = viewer.screenshot(str(path), canvas_only=False)
    assert path.exists() and shot.shape[0] > 500 and shot.shape[1] > 900
    assert np.asarray(shot)[..., :3].std() > 10  # not a blank window
