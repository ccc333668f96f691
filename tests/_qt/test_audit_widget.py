"""The audit dock after a run (defects of issue 12): the all-cells layer, flags and deletions from the table,
the selected cell's outline, the checkpoint named per row, errors in napari's notifications, the layout on a
1366×768 screen."""

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea

from napari_gradcamo.audit import labels_features


def test_all_cells_layer_comes_back_when_ticked_again(audited_dock):
    viewer, widget, labels = audited_dock
    layer = widget.all_cells_layer()
    assert layer is not None and layer.visible
    widget.show_all.setChecked(False)
    assert not layer.visible
    widget.show_all.setChecked(True)
    assert widget.all_cells_layer().visible


def test_flag_tick_in_sorted_table_keeps_the_selected_cell(audited_dock):
    viewer, widget, labels = audited_dock
    table = widget.table
    column = table.model.columns.index("gradcamo")
    table.view.sortByColumn(column, Qt.SortOrder.DescendingOrder)
    chosen = table.visible_labels()[-1]  # the lowest score: far from label 1 in this order
    table.select_label(chosen, emit=True)
    other = table.visible_labels()[0]
    flag_col = table.model.columns.index("flagged")
    table.model.setData(table.model.index(table.model.row_of(other), flag_col), Qt.CheckState.Checked,
                        Qt.ItemDataRole.CheckStateRole)
    assert table.selected_labels() == [chosen]
    widget.results.flag_button.click()  # the 'Flag / unflag' button
    row = widget.features().set_index("label").loc[chosen]
    assert row[labels_features.OVERRIDE] != ""  # the button acted on the selected cell, not on label 1


def test_delete_cell_erases_every_slice_and_its_row(audited_dock, qtbot):
    viewer, widget, labels = audited_dock
    victim = int(widget.features()["label"].iloc[0])
    widget.table.select_label(victim)
    assert widget.delete_selected_cells()
    qtbot.wait(50)
    assert not (np.asarray(labels.data) == victim).any()
    assert victim not in set(widget.features()["label"])
    labels.undo()
    qtbot.wait(50)
    assert (np.asarray(labels.data) == victim).any() and victim in set(widget.features()["label"])


def test_selected_cell_is_outlined(audited_dock):
    viewer, widget, labels = audited_dock
    label = int(widget.features()["label"].iloc[2])
    widget.select_label(label)
    outline = widget.cam_layers.outline_layer()
    assert outline is not None and outline.visible and outline.metadata["label"] == label
    assert outline.data.any() and outline.contour > 0
    assert outline not in [widget.labels_picker.itemData(i) for i in range(widget.labels_picker.count())]


def test_rows_name_their_checkpoint_and_a_switch_is_shown(audited_dock, tmp_path, plugin_checkpoint):
    import shutil

    viewer, widget, labels = audited_dock
    name = Path(plugin_checkpoint).name
    assert set(widget.features()[labels_features.MODEL]) == {name}
    assert name in widget.summary.text()
    other = tmp_path / ("other" + Path(plugin_checkpoint).suffix)
    shutil.copy(plugin_checkpoint, other)
    for sidecar in Path(plugin_checkpoint).parent.glob(Path(plugin_checkpoint).stem + ".*"):
        if sidecar.suffix != Path(plugin_checkpoint).suffix:
            shutil.copy(sidecar, tmp_path / ("other" + sidecar.suffix))
    assert widget.load_model(other)
    assert "run again" in widget.summary.text() and other.name in widget.summary.text()


def test_errors_reach_napari_notifications(audited_dock, monkeypatch):
    viewer, widget, labels = audited_dock
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: shown.append(message))
    viewer.layers.remove(labels)
    assert not widget.run()
    assert shown and "Labels layer" in shown[-1]


def test_run_strip_is_outside_the_scroll_area_and_the_dock_fits_1366x768(audited_dock):
    viewer, widget, labels = audited_dock
    parent = widget.run_all_button.parent()
    while parent is not None:
        assert not isinstance(parent, QScrollArea)
        parent = parent.parent()
    assert widget.minimumSizeHint().height() <= 700 and widget.minimumSizeHint().width() <= 600


@pytest.mark.screenshot
def test_screenshot_after_audit_and_selection(audited_dock, qtbot, screenshot_dir):
    viewer, widget, labels = audited_dock
    viewer.window._qt_window.resize(1366, 768)
    table = widget.features()
    widget.select_label(int(table.sort_values("gradcamo").iloc[0]["label"]))
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 300
    assert shot[..., :3].std() > 10  # not a blank window
    from imageio.v3 import imwrite

    imwrite(screenshot_dir / "screenshot_audit_1366x768.png", shot)
