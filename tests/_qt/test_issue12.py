"""Defects of issue 12, one test each: what the audit dock shows and does after a run."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea

from napari_gradcamo._qt.panel import first_line
from napari_gradcamo.audit import labels_features, results


@pytest.fixture
def audited(audited_dock):
    return audited_dock


def test_all_cells_layer_comes_back_when_ticked_again(audited):
    viewer, widget, labels = audited
    layer = widget.all_cells_layer()
    assert layer is not None and layer.visible
    widget.show_all.setChecked(False)
    assert not layer.visible
    widget.show_all.setChecked(True)
    assert widget.all_cells_layer().visible


def test_flag_tick_in_sorted_table_keeps_the_selected_cell(audited):
    viewer, widget, labels = audited
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
    widget._flag_selected()
    row = widget.features().set_index("label").loc[chosen]
    assert row[labels_features.OVERRIDE] != ""  # the button acted on the selected cell, not on label 1


def test_score_colours_span_the_scores_seen():
    table = labels_features.ensure_schema(pd.DataFrame({
        "label": [1, 2, 3], "gradcamo": [0.03, 0.2, 0.46], "status": [results.STATUS_AUDITED] * 3,
    }))
    colors = labels_features.label_colors(table, "score", "gradcamo")
    from matplotlib import colormaps

    cmap = colormaps[labels_features.SCORE_COLORMAP]
    np.testing.assert_allclose(colors[1], cmap(0.0))
    np.testing.assert_allclose(colors[3], cmap(1.0))
    assert labels_features.legend("score", 0.5, table).value_range == (0.03, 0.46)


def test_ok_and_not_audited_differ_over_a_bright_stain():
    """At the labels layer's default opacity over white, 'looks at the cell' must not look like 'not audited'."""
    def over_white(rgba, opacity=0.45):
        alpha = rgba[3] * opacity
        return np.asarray(rgba[:3]) * alpha + (1 - alpha)

    gap = np.abs(over_white(labels_features.COLOR_OK) - over_white(labels_features.COLOR_NOT_AUDITED)).max()
    assert gap > 0.3


def test_delete_cell_erases_every_slice_and_its_row(audited, qtbot):
    viewer, widget, labels = audited
    victim = int(widget.features()["label"].iloc[0])
    widget.table.select_label(victim)
    assert widget.delete_selected_cells()
    qtbot.wait(50)
    assert not (np.asarray(labels.data) == victim).any()
    assert victim not in set(widget.features()["label"])
    labels.undo()
    qtbot.wait(50)
    assert (np.asarray(labels.data) == victim).any() and victim in set(widget.features()["label"])


def test_selected_cell_is_outlined(audited):
    viewer, widget, labels = audited
    label = int(widget.features()["label"].iloc[2])
    widget.select_label(label)
    outline = widget.cam_layers.outline_layer()
    assert outline is not None and outline.visible and outline.metadata["label"] == label
    assert outline.data.any() and outline.contour > 0
    assert outline not in [widget.labels_picker.itemData(i) for i in range(widget.labels_picker.count())]


def test_rows_name_their_checkpoint_and_a_switch_is_shown(audited, tmp_path, plugin_checkpoint):
    import shutil

    viewer, widget, labels = audited
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


def test_errors_reach_napari_notifications(audited, monkeypatch):
    viewer, widget, labels = audited
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", lambda message: shown.append(message))
    viewer.layers.remove(labels)
    assert not widget.run()
    assert shown and "Labels layer" in shown[-1]


def test_first_line_drops_ansi_codes_and_long_dumps():
    error = RuntimeError("\x1b[31mWeights only load failed\x1b[0m\n" + "x" * 1500)
    text = first_line(error)
    assert text == "Weights only load failed" and "\x1b" not in text


def test_run_strip_is_outside_the_scroll_area_and_the_dock_fits_1366x768(audited):
    viewer, widget, labels = audited
    parent = widget.run_all_button.parent()
    while parent is not None:
        assert not isinstance(parent, QScrollArea)
        parent = parent.parent()
    assert widget.minimumSizeHint().height() <= 700 and widget.minimumSizeHint().width() <= 600


@pytest.mark.screenshot
def test_screenshot_after_audit_and_selection(audited, qtbot, screenshot_dir):
    viewer, widget, labels = audited
    viewer.window._qt_window.resize(1366, 768)
    table = widget.features()
    widget.select_label(int(table.sort_values("gradcamo").iloc[0]["label"]))
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 300
    assert shot[..., :3].std() > 10  # not a blank window
    from imageio.v3 import imwrite

    imwrite(screenshot_dir / "screenshot_audit_1366x768.png", shot)


def test_centring_on_a_border_cell_keeps_the_field_in_view(audited):
    from napari_gradcamo._qt import layers as L

    viewer, widget, labels = audited
    viewer.reset_view()
    table = widget.features()
    corner = table.assign(d=table["centroid_y"] + table["centroid_x"]).sort_values("d").iloc[0]
    L.focus_on(viewer, labels, (corner["centroid_z"], corner["centroid_y"], corner["centroid_x"]))
    center = np.asarray(L.camera(viewer).center[-2:])
    extent = np.asarray(labels.extent.world)[:, -2:]
    half = 0.5 * np.asarray(viewer.canvas.size) / L.camera(viewer).zoom
    # the whole field fits at the reset zoom: the camera stays on its middle instead of on the corner cell
    assert np.all((extent[1] - extent[0]) <= 2 * half + 1e-6)
    np.testing.assert_allclose(center, extent.mean(axis=0), atol=1e-6)


def test_segment_dock_says_model_errors_in_gui_words(make_napari_viewer):
    from napari_gradcamo._qt.segment_widget import GUI_OFFLINE_HINT, SegmentWidget
    from napari_gradcamo.segment.cellpose import SegmentationError, SegmentationSettings
    from napari_gradcamo.segment.cellpose3 import check_model_file

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    assert widget.diameter.value() == (SegmentationSettings().diameter or 0.0)
    junk = Path(__import__("tempfile").mkdtemp()) / "junk.pt"
    junk.write_bytes(b"\x80\x04not a model" * 100)
    with pytest.raises(SegmentationError) as caught:
        check_model_file(junk)
    widget._mark(str(caught.value) + "\x1b[31m" + "x" * 1500 + "\x1b[0m")
    assert widget.invalid_fields() == ["model"]  # not 'mode' as well
    text = widget.panel.status.text()
    assert "\x1b" not in text and len(text) < 700
    assert GUI_OFFLINE_HINT in text and "--cellpose-model" not in text
