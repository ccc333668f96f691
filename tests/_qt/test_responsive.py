"""How the audit dock keeps napari's main thread free during a run (issue 12). The time it reaches is
measured by ``benchmarks/gui_stall.py``, not here; these tests check each part of how it is built."""

import threading
import time

import numpy as np
import pytest
import torch

from napari_gradcamo._qt import audit_runner
from napari_gradcamo._qt.audit_runner import AuditRun
from napari_gradcamo._qt.workers import one_core_for_the_viewer
from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit import run as core_audit
from napari_gradcamo.crops import extract
from qt_helpers import audited


def test_the_worker_locates_cells_copies_masks_and_builds_the_fresh_table(field_dock, qtbot, monkeypatch):
    viewer, widget, _, labels = field_dock
    on_main = []
    real_table = extract.cell_table

    def recording(labels_array):
        on_main.append(threading.current_thread() is threading.main_thread())
        return real_table(labels_array)

    for module in (extract, labels_features, core_audit):
        if hasattr(module, "cell_table"):
            monkeypatch.setattr(module, "cell_table", recording)
    widget.synchronous = False
    assert widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert on_main and not any(on_main)  # every whole-volume pass ran in the worker
    assert len(on_main) == 1  # and the cells were located once, for the fresh table and the audit
    assert audited(widget) == labels.data.max()


def test_the_map_layer_comes_with_the_model_and_no_layer_is_added_during_a_run(field_dock, qtbot, slow_audit):
    """Adding a napari layer takes ~0.3 s of main-thread time under software OpenGL."""
    viewer, widget, _, labels = field_dock
    layer = widget.all_cells_layer()
    assert layer is not None and not layer.visible  # added hidden when the model was loaded
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    widget.synchronous = False
    assert widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert added == []
    assert widget.all_cells_layer() is layer and layer.visible and float(np.asarray(layer.data).max()) > 0


def test_view_updates_never_run_inside_one_another(field_dock, qtbot, slow_audit, monkeypatch):
    """No callback processes events re-entrantly (napari's activity-dock progress did, on every update)."""
    viewer, widget, _, labels = field_dock
    monkeypatch.setattr(audit_runner, "TABLE_REFRESH_S", 0.0)
    monkeypatch.setattr(audit_runner, "MAP_REFRESH_S", 0.2)
    monkeypatch.setattr(audit_runner, "COLOUR_REFRESH_S", 0.2)
    depth, deepest, calls = [0], [0], []
    for name in ("_on_batch", "_refresh_tick", "_next_view_step", "_on_run_return", "_on_run_finished"):
        real = getattr(widget, name)

        def wrapped(*args, _real=real, _name=name):
            depth[0] += 1
            deepest[0] = max(deepest[0], depth[0])
            calls.append(_name)
            try:
                return _real(*args)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(widget, name, wrapped)
    widget._refresh_timer.timeout.disconnect()
    widget._refresh_timer.timeout.connect(widget._refresh_tick)
    widget.synchronous = False
    assert widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert calls.count("_on_batch") >= 3 and calls.count("_refresh_tick") >= 3
    assert deepest[0] == 1


def test_each_tick_does_one_update_the_most_overdue(field_dock):
    viewer, widget, _, labels = field_dock
    done = []
    widget._show_rows = lambda run: done.append("rows")
    widget._show_map = lambda run: done.append("map")
    widget._show_colours = lambda run: done.append("colours")
    now = time.perf_counter()
    run = AuditRun(labels, [], 1, None, "m", queued_rows=[object()], map_dirty=True, colours_dirty=True,
                   table_shown_at=now - 1.0, map_shown_at=now - 9.0, colours_shown_at=now - 4.0)
    widget.run_state = run
    try:
        widget._refresh_tick()
        assert done == ["map"]  # 9 - 2 s overdue beats 4 - 3 s and 1 - 0.5 s
        run.map_dirty = False
        widget._refresh_tick()
        assert done == ["map", "colours"]
        run.colours_dirty = False
        run.table_shown_at = time.perf_counter()  # just shown: not due yet
        widget._refresh_tick()
        assert done == ["map", "colours"]
        viewer.dims.ndisplay = 3
        run.map_dirty = run.colours_dirty = True
        run.table_shown_at = 0.0
        widget._refresh_tick()
        assert done == ["map", "colours", "rows"]  # in 3D only the table updates while running
    finally:
        widget.run_state = None


@pytest.mark.parametrize("ndisplay", [2, 3])
def test_colours_follow_the_run_in_2d_and_wait_for_its_end_in_3d(field_dock, qtbot, slow_audit, monkeypatch,
                                                                    ndisplay):
    viewer, widget, _, labels = field_dock
    monkeypatch.setattr(audit_runner, "COLOUR_REFRESH_S", 0.3)
    viewer.dims.ndisplay = ndisplay
    recoloured = []
    labels.events.colormap.connect(lambda event: recoloured.append(widget.busy and widget.job.running))
    widget.synchronous = False
    assert widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    during = recoloured.count(True)
    assert (during >= 1) if ndisplay == 2 else (during == 0)
    assert recoloured and recoloured[-1] is False  # and once more when the run ended
    expected = labels_features.label_colors(widget.features(), "flag")
    np.testing.assert_allclose(labels.colormap.color_dict[1], expected[1])


def test_torch_leaves_one_core_for_the_viewer():
    before = torch.get_num_threads()
    with one_core_for_the_viewer() as threads:
        assert torch.get_num_threads() == threads == max(1, min(before, len(__import__("os").sched_getaffinity(0)) - 1))
    assert torch.get_num_threads() == before


def test_features_follow_a_table_another_tool_sets(field_dock):
    """The dock conforms labels.features once per table napari holds; a new table (another plugin's) is read."""
    viewer, widget, _, labels = field_dock
    first = widget.features()
    assert widget.features() is first
    labels.features = labels.features.assign(other_tool=7)
    again = widget.features()
    assert again is not first and (again["other_tool"] == 7).all()


@pytest.mark.screenshot
def test_screenshot_while_the_audit_runs(field_dock, qtbot, slow_audit, monkeypatch, screenshot_dir):
    """What a person sees mid-run: rows, map and colours of the cells done so far (looked at in docs/)."""
    viewer, widget, _, labels = field_dock
    monkeypatch.setattr(audit_runner, "MAP_REFRESH_S", 0.3)
    monkeypatch.setattr(audit_runner, "COLOUR_REFRESH_S", 0.3)
    viewer.window._qt_window.resize(1366, 768)
    widget.synchronous = False
    assert widget.run()
    total = int(labels.data.max())
    qtbot.waitUntil(lambda: audited(widget) >= 2 and labels.colormap.color_dict.get(1) is not None
                    and widget.all_cells_layer().visible, timeout=60_000)
    qtbot.wait(700)  # one more map and colour refresh
    done = audited(widget)
    shot = viewer.screenshot(canvas_only=False)
    from imageio.v3 import imwrite

    imwrite(screenshot_dir / "screenshot_audit_running.png", shot)
    assert widget.busy and 2 <= done < total
    assert not widget.save_button.isEnabled() and not widget.export_button.isEnabled()
    colours = {tuple(np.round(labels.colormap.color_dict[int(label)], 3)) for label in widget.features()["label"]}
    assert len(colours) >= 2  # audited cells coloured, the rest still 'not audited'
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
