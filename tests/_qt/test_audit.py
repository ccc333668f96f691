"""Grad-CAMO audit widget: threads, cancel, deleted layers, channel mapping, selections, colours."""

import numpy as np
import pytest

from napari_gradcamo._qt import AuditWidget
from napari_gradcamo.audit import labels_features
from napari_gradcamo.output import results
from qt_helpers import audited


@pytest.fixture
def setup(field_dock):
    return field_dock


def test_threaded_run_keeps_gui_alive_and_fills_table_live(setup, qtbot, slow_audit):
    viewer, widget, _, labels = setup
    widget.synchronous = False
    sizes = []
    widget.table.model.modelReset.connect(lambda: sizes.append(audited(widget)))
    widget.table.model.dataChanged.connect(lambda *_: sizes.append(audited(widget)))
    assert widget.run()
    assert widget.job.running and widget.busy and not widget.run_all_button.isEnabled()
    assert widget.panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert audited(widget) == labels.data.max()
    partial = sorted(set(sizes) - {0, int(labels.data.max())})
    assert partial, f"no partial table was shown while the audit ran: {sizes}"  # rows appear as batches finish
    assert sizes == sorted(sizes)  # and only ever grow
    assert widget.run_all_button.isEnabled() and "Audited" in widget.panel.status.text()


def test_cancel_keeps_finished_rows_sync(setup):
    viewer, widget, _, labels = setup
    original = widget._on_batch

    def cancel_after_two(batch):
        original(batch)
        if batch.done == 2:
            widget.cancel()

    widget._on_batch = cancel_after_two
    assert widget.run()
    assert audited(widget) == 2
    assert "Cancelled: 2 of" in widget.panel.status.text() and "kept" in widget.panel.status.text()
    table = widget.features()
    assert (table.loc[table["status"] == results.STATUS_NOT_AUDITED, "label"].size == labels.data.max() - 2)
    assert len(widget.cams()) == 2
    assert widget.run_all_button.isEnabled()


def test_cancel_mid_run_threaded(setup, qtbot, slow_audit):
    viewer, widget, _, labels = setup
    widget.synchronous = False
    assert widget.run()
    qtbot.waitUntil(lambda: audited(widget) >= 1, timeout=60_000)
    widget.panel.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    n = audited(widget)
    assert 1 <= n < labels.data.max()
    assert "Cancelled" in widget.panel.status.text()
    assert set(widget.cams()) == set(widget.features().query("status == 'audited'")["label"])


@pytest.mark.parametrize("which", ["labels", "image"])
def test_layer_deleted_mid_run(setup, qtbot, slow_audit, which):
    viewer, widget, images, labels = setup
    widget.synchronous = False
    assert widget.run()
    qtbot.waitUntil(lambda: audited(widget) >= 1, timeout=60_000)
    victim = labels if which == "labels" else images[1]
    name = victim.name
    viewer.layers.remove(victim)
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    message = widget.panel.status.text()
    assert f"'{name}' was deleted during the audit" in message and "stopped" in message
    if which == "labels":
        assert widget.labels_layer is None and widget.table.model.rowCount() == 0
        assert not widget.run_all_button.isEnabled()
    else:
        assert 1 <= audited(widget) < labels.data.max()  # finished rows kept on the labels layer
        assert "keep their rows" in message
        assert "Channel mismatch" in widget.mapping_message.text()  # ER is gone
    qtbot.wait(50)  # late signals from the stopped worker must not raise


def test_wrong_channel_mapping_is_refused(setup, make_napari_viewer, plugin_field, plugin_checkpoint):
    viewer, widget, images, labels = setup
    for layer, name in zip(images, ["c1", "c2", "c3", "c4", "c5"]):
        layer.name = name
        layer.metadata.pop("gradcamo_channel")
    widget.picker.refresh()
    assert "Channel mismatch" in widget.mapping_message.text()
    assert all(c.currentData() is None for c in widget.mapping_combos)
    assert not widget.run()
    assert "Channel mismatch" in widget.panel.status.text() and "DNA" in widget.panel.status.text()
    assert audited(widget) == 0
    # the same channel twice is refused too
    widget.set_channel_map([0, 0, 2, 3, 4])
    assert not widget.run() and "used for two model channels" in widget.panel.status.text()
    # a correct map by hand runs
    widget.set_channel_map([0, 1, 2, 3, 4])
    assert widget.mapping_message.text() == ""
    assert widget.run()
    assert audited(widget) == labels.data.max()
    # a shuffled map also runs, and gives other predictions (the model sees the channels it is told to)
    first = widget.features()["probability"].to_numpy()
    widget.set_channel_map([4, 3, 2, 1, 0])
    assert widget.run()
    assert not np.allclose(widget.features()["probability"].to_numpy(), first)


def test_four_channel_image_is_refused(setup):
    viewer, widget, images, labels = setup
    viewer.layers.remove(images[-1])  # Mito gone
    assert "Choose an image channel for Mito" in widget.mapping_message.text()
    assert not widget.run()


def test_multichannel_4d_layer(make_napari_viewer, plugin_field, plugin_checkpoint):
    viewer = make_napari_viewer()
    image = viewer.add_image(plugin_field.image.data, name="field", scale=(1, *plugin_field.image.voxel_size),
                             metadata={"channel_names": plugin_field.image.channel_names, "channel_axis": 0})
    labels = viewer.add_labels(plugin_field.labels, scale=plugin_field.image.voxel_size)
    widget = AuditWidget(viewer)
    widget.synchronous = True
    assert widget.picker.layers() == [image]
    assert widget.picker.channel_names() == plugin_field.image.channel_names
    assert widget.load_model(plugin_checkpoint) and widget.mapping_message.text() == ""
    assert widget.run()
    assert audited(widget) == labels.data.max()


def test_run_selected_only_and_not_audited_rows(setup):
    viewer, widget, _, labels = setup
    widget.table.select_label(3)
    widget.table.view.selectRow(widget.table.proxy.mapFromSource(widget.table.model.index(
        widget.table.model.row_of(3), 0)).row())
    assert widget.table.selected_labels() == [3]
    assert widget.run(only_selected=True)
    table = widget.features().set_index("label")
    assert table.loc[3, "status"] == results.STATUS_AUDITED
    assert (table.drop(index=3)["status"] == results.STATUS_NOT_AUDITED).all()
    # a not-audited cell: selecting it hides the single-cell CAM and says why
    widget.select_label(2)
    assert widget.cell_cam_layer() is None or not widget.cell_cam_layer().visible
    assert "no Grad-CAM yet" in widget.panel.status.text()
    widget.select_label(3)
    assert widget.cell_cam_layer().visible and widget.cell_cam_layer().metadata["label"] == 3


def test_moving_a_cell_recomputes_its_cam(setup, qtbot):
    viewer, widget, _, labels = setup
    assert widget.run()
    old_origin = widget.cams()[2].origin
    data = labels.data
    # replace cell 2 by a block elsewhere (its crop must move): one undoable edit through the layer API
    z, y, x = np.nonzero(data == 2)
    indices = (z, y, x)
    labels.data_setitem(indices, 0)
    free = np.argwhere(data[:, :, :] == 0)
    far = free[np.argmax(np.abs(free[:, 1] - y.mean()) + np.abs(free[:, 2] - x.mean()))]
    block = tuple(np.clip(far, 2, None))
    labels.data_setitem(tuple(np.array([[block[0]], [block[1] - 1], [block[2] - 1]])), 2)
    qtbot.waitUntil(lambda: 2 in widget.cams() and widget.cams()[2].origin != old_origin, timeout=30_000)
    row = labels_features.row_of(widget.features(), 2)
    assert row["status"] == results.STATUS_AUDITED and row["volume_voxels"] == 1


def test_colour_by_score_and_legend(setup):
    viewer, widget, _, labels = setup
    assert widget.run()
    widget.color_mode.setCurrentIndex(widget.color_mode.findData("gradcamo"))
    colors = labels.colormap.color_dict
    table = widget.features()
    expected = labels_features.label_colors(table, "score", "gradcamo")
    for label in table["label"]:
        np.testing.assert_allclose(colors[int(label)], expected[int(label)])
    assert "Grad-CAMO (lowest → highest seen)" in widget.legend.text()
    # the default flag: the chance-corrected score below 0 (no more attention than a uniform map gives)
    assert widget.results.flag_on.currentData() == "normalised"
    assert widget.features()["flagged"].tolist() == (
        (table["normalised"] < 0.0) | table["normalised"].isna()
    ).tolist()
    # the paper's rule on raw Grad-CAMO; the slider and the spin box are one control
    widget.results.flag_on.setCurrentIndex(widget.results.flag_on.findData("gradcamo"))
    widget.threshold_slider.setValue(80)
    assert widget.threshold.value() == pytest.approx(0.8)
    assert widget.features()["flagged"].tolist() == (
        (table["gradcamo"] < 0.8) | table["gradcamo"].isna()
    ).tolist()


def test_table_filter_and_flagged_only(setup):
    viewer, widget, _, labels = setup
    assert widget.run()
    widget.results.flag_on.setCurrentIndex(widget.results.flag_on.findData("gradcamo"))
    widget.threshold.setValue(float(widget.features()["gradcamo"].median()))
    n_flagged = int(widget.features()["flagged"].sum())
    widget.table.flagged_only.setChecked(True)
    assert widget.table.proxy.rowCount() == n_flagged
    widget.table.flagged_only.setChecked(False)
    widget.table.filter_edit.setText("gradcamo >= 0.0 and label <= 2")
    assert widget.table.visible_labels() == [1, 2]
    widget.table.filter_edit.setText("gradcamo <")  # half-typed: all rows, the box says why
    assert widget.table.proxy.rowCount() == labels.data.max() and widget.table.proxy.error
    widget.table.filter_edit.setText("")
    assert widget.table.proxy.rowCount() == labels.data.max()


def test_bad_checkpoints_are_refused_with_a_message(setup, tmp_path):
    import torch

    viewer, widget, _, _ = setup
    loaded = widget.bundle
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00not a checkpoint")
    assert not widget.load_model(corrupt)
    assert "corrupt" in widget.model_info.text() and widget.bundle is loaded
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    assert not widget.load_model(pickled)
    assert "Refused" in widget.model_info.text() and widget.bundle is loaded


def test_export_cancelled_between_cells_writes_no_table(setup, tmp_path):
    """The export runs the core's per-cell steps in the job itself: Cancel stops it before the table is written."""
    viewer, widget, _, labels = setup
    assert widget.run()
    widget.threshold.setValue(1.0)  # flag every cell (normalised ≤ 1), so the export has several steps
    assert int(widget.features()["flagged"].sum()) >= 2
    seen, step = [], widget.panel.step

    def step_then_cancel(done, total, message=""):
        seen.append(done)
        step(done, total, message)
        if done == 1:
            widget.panel.cancel_button.click()

    widget.panel.step = step_then_cancel
    assert widget.export_to(tmp_path / "export")
    assert seen == [1] and "cancelled" in widget.panel.status.text().lower()
    assert not list((tmp_path / "export").glob("*.csv")) and not list((tmp_path / "export").glob("*.parquet"))
