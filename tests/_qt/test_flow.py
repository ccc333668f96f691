"""The whole plugin flow in a real viewer: sample → segment → load model → run → table → clicks → edits → export."""

from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_gradcamo._qt import AuditWidget, SegmentWidget
from napari_gradcamo._qt import layers as L
from napari_gradcamo._sample_data import field_layers
from napari_gradcamo.audit import labels_features
from napari_gradcamo.output import results


def add_field(viewer, field):
    layers = []
    for data, kwargs, kind in field_layers(field):
        layers.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return layers[:-1], layers[-1]


def press(layer, position, viewer):
    """Run the layer's mouse-press callbacks with a napari-like event at a world ``position``."""
    from napari.utils.interactions import mouse_press_callbacks

    dims = viewer.dims
    event = SimpleNamespace(
        type="mouse_press", is_dragging=False, modifiers=[], button=1, handled=False,
        position=tuple(float(p) for p in position),
        view_direction=tuple(float(v) for v in viewer.camera.view_direction) if dims.ndisplay == 3 else None,
        dims_displayed=list(dims.displayed), dims_point=list(dims.point),
    )
    mouse_press_callbacks(layer, event)


def generalist_model():
    from napari_gradcamo.segment.weights import WeightsError, generalist_cyto_model

    try:
        return str(generalist_cyto_model())
    except WeightsError as error:  # pragma: no cover - only without the package index and without a cache
        pytest.skip(f"generalist cellpose weights unavailable: {error}")


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


def test_end_to_end_flow(viewer, qtbot, plugin_field, plugin_checkpoint, tmp_path, monkeypatch):
    images, truth = add_field(viewer, plugin_field)
    voxel = plugin_field.image.voxel_size

    # ---- segment (real cellpose, generalist weights) -----------------------------------------
    seg = SegmentWidget(viewer)
    seg.synchronous = True
    viewer.window.add_dock_widget(seg)
    assert [l.name for l in seg.picker.layers()] == [l.name for l in images]
    assert seg.nucleus.currentData() == 0 and seg.cyto.currentData() == 3  # DNA / AGP guessed by name
    assert seg.anisotropy.value() == pytest.approx(voxel[0] / voxel[2])
    seg.model.setEditText(generalist_model())
    seg.diameter.setValue(40.0)
    assert seg.run(), seg.panel.status.text()
    out = seg.output_layer
    assert out is not None and out in viewer.layers and "cells found" in seg.panel.status.text()
    assert out.data.shape == plugin_field.labels.shape and out.data.max() >= 3
    assert tuple(out.scale) == pytest.approx(voxel)
    # a re-run replaces its own output layer, never another one
    n_layers = len(viewer.layers)
    assert seg.run()
    assert seg.output_layer is out and len(viewer.layers) == n_layers
    np.testing.assert_array_equal(truth.data, plugin_field.labels)

    # ---- audit on the segmented cells ----------------------------------------------------------
    widget = AuditWidget(viewer)
    widget.synchronous = True
    viewer.window.add_dock_widget(widget)
    widget.labels_picker.set_layer(out)
    assert widget.labels_layer is out
    assert widget.load_model(plugin_checkpoint)
    assert "small-cnn-3d" in widget.model_info.text() and "8×32×32" in widget.model_info.text()
    assert widget.target_layer.count() >= 3 and "(" in widget.target_layer.currentText()
    assert widget.mapping_message.text() == ""
    assert widget.channel_map() == [0, 1, 2, 3, 4]
    assert widget.run(), widget.panel.status.text()
    table = widget.features()
    n_cells = len(np.unique(out.data)) - 1
    assert len(table) == n_cells and (table["status"] == results.STATUS_AUDITED).all()
    assert set(out.features["label"]) == set(table["label"]) and "gradcamo" in out.features
    assert widget.table.model.rowCount() == n_cells
    assert "Audited" in widget.panel.status.text()
    assert isinstance(out.colormap, __import__("napari").utils.colormaps.DirectLabelColormap)
    composite = widget.all_cells_layer()
    assert composite is not None and composite.data.shape == out.data.shape and composite.data.max() > 0

    # ---- row click → selected label, camera, the cell's CAM at the right world position ----------
    label = int(table["label"].iloc[len(table) // 2])
    row = widget.table.model.row_of(label)
    index = widget.table.proxy.mapFromSource(widget.table.model.index(row, 2))
    widget.table.view.setCurrentIndex(index)
    assert out.selected_label == label
    cam_layer = widget.cell_cam_layer()
    cam = widget.cams()[label]
    assert cam_layer is not None and cam_layer.visible and cam_layer.blending == "additive"
    np.testing.assert_allclose(cam_layer.translate, np.asarray(cam.origin) * np.asarray(voxel) + np.asarray(out.translate))
    np.testing.assert_allclose(cam_layer.scale, out.scale)
    np.testing.assert_allclose(cam_layer.data, cam.on_crop_grid(), rtol=1e-6)
    assert tuple(cam_layer.contrast_limits) == pytest.approx((cam_layer.data.min(), cam_layer.data.max()))
    # the CAM's voxel (0,0,0) and the labels' voxel `origin` are the same point in the world
    np.testing.assert_allclose(cam_layer.data_to_world((0, 0, 0)), out.data_to_world(cam.origin))
    centroid = labels_features.row_of(table, label)[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
    world = centroid * np.asarray(voxel)
    assert viewer.dims.point[0] == pytest.approx(world[0], abs=voxel[0])
    # the cell is in view, and the camera stays over the field (a border cell does not shove it into a corner)
    center = np.asarray(L.camera(viewer).center[-2:])
    half = 0.5 * np.asarray(viewer.canvas.size) / L.camera(viewer).zoom
    assert np.all(np.abs(center - world[1:]) <= half)
    extent = np.asarray(out.extent.world)[:, -2:]
    assert np.all(center >= extent[0]) and np.all(center <= extent[1])
    assert viewer.layers.selection.active is out

    # ---- canvas click on another cell (2D, event object) → its row --------------------------------
    other = int(table["label"].iloc[0])
    zz, yy, xx = np.nonzero(out.data == other)
    k = len(zz) // 2
    viewer.dims.set_point(0, zz[k] * voxel[0])
    press(out, np.array([zz[k], yy[k], xx[k]]) * np.asarray(voxel), viewer)
    assert widget.table.current_label() == other
    assert widget.cell_cam_layer().metadata["label"] == other
    # the same in 3D: a ray along z through the cell's column
    viewer.dims.ndisplay = 3
    press(out, np.array([zz[k], yy[k], xx[k]]) * np.asarray(voxel), viewer)
    assert widget.table.current_label() == other
    press(out, (0.0, 0.0, 0.0), viewer)  # background: selection unchanged
    assert widget.table.current_label() == other
    viewer.dims.ndisplay = 2

    # ---- real mouse click in the middle of the canvas ---------------------------------------------
    widget.table.select_label(other)
    assert widget.table.current_label() == other
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitExposed(canvas)
    zz, yy, xx = np.nonzero(out.data == label)
    inside = np.argmin((zz - centroid[0]) ** 2 + (yy - centroid[1]) ** 2 + (xx - centroid[2]) ** 2)
    voxel_zyx = (zz[inside], yy[inside], xx[inside])
    L.focus_on(viewer, out, voxel_zyx)
    world = np.asarray(out.data_to_world(voxel_zyx), float)
    assert out.get_value(tuple(world), world=True) == label
    # focus_on keeps the field in view, so the cell need not be in the middle: click where it is drawn
    cam = L.camera(viewer)
    dy, dx = (world[-2:] - np.asarray(cam.center[-2:], float)) * cam.zoom
    pos = QPoint(int(round(canvas.width() / 2 + dx)), int(round(canvas.height() / 2 + dy)))
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=pos)
    assert widget.table.current_label() == label
    assert widget.cell_cam_layer().metadata["label"] == label

    # ---- mask edits: rescore with the cached CAM, delete → row removed, new label → not audited --
    before = labels_features.row_of(widget.features(), label)
    out.brush_size = 5
    out.paint((zz[inside], yy[inside], xx[inside]), 0)  # erase a small hole inside its crop
    qtbot.waitUntil(lambda: labels_features.row_of(widget.features(), label)["volume_voxels"] == (out.data == label).sum())
    after = labels_features.row_of(widget.features(), label)
    assert after["volume_voxels"] < before["volume_voxels"]
    assert after["status"] == results.STATUS_AUDITED and after["gradcamo"] != before["gradcamo"]
    from napari_gradcamo.audit.run import rescore

    assert after["gradcamo"] == pytest.approx(rescore(widget.cams()[label], np.asarray(out.data)).gradcamo)
    assert "rescored" in widget.panel.status.text()
    victim = int(table["label"].iloc[-1])
    vz, vy, vx = np.nonzero(out.data == victim)
    out.contiguous = False
    out.n_edit_dimensions = 3
    out.fill((vz[0], vy[0], vx[0]), 0)
    assert not (out.data == victim).any()
    qtbot.waitUntil(lambda: victim not in set(widget.features()["label"]))
    assert victim not in set(widget.features()["label"]) and widget.table.model.row_of(victim) is None
    new_label = int(out.data.max()) + 1
    out.paint((0, 2, 2), new_label)
    qtbot.waitUntil(lambda: labels_features.row_of(widget.features(), new_label) is not None)
    new_row = labels_features.row_of(widget.features(), new_label)
    assert new_row is not None and new_row["status"] == results.STATUS_NOT_AUDITED
    # undo brings the deleted cell back as a row (not audited: its CAM was dropped with it)
    out.undo()
    assert labels_features.row_of(widget.features(), new_label) is None
    out.undo()
    assert labels_features.row_of(widget.features(), victim) is not None

    # ---- threshold → flagged + colours at once; hand flag via the check box ------------------------
    scores = widget.features().set_index("label")["gradcamo"].dropna()
    widget.results.flag_on.setCurrentIndex(widget.results.flag_on.findData("gradcamo"))
    widget.threshold.setValue(float(np.round(scores.median(), 2)) + 0.01)
    flagged = widget.features()["flagged"]
    assert 0 < flagged.sum() < len(flagged)
    colors = out.colormap.color_dict
    for _, r in widget.features().iterrows():
        if r["status"] == results.STATUS_AUDITED:
            expected = labels_features.COLOR_FLAGGED if r["flagged"] else labels_features.COLOR_OK
            np.testing.assert_allclose(colors[int(r["label"])], expected)
    assert "flagged" in widget.legend.text()
    ok_label = int(widget.features().query("status == 'audited' and not flagged")["label"].iloc[0])
    check = widget.table.model.index(widget.table.model.row_of(ok_label), widget.table.model.columns.index("flagged"))
    widget.table.model.setData(check, Qt.CheckState.Checked, Qt.ItemDataRole.CheckStateRole)
    assert bool(labels_features.row_of(widget.features(), ok_label)["flagged"])
    assert labels_features.row_of(widget.features(), ok_label)[labels_features.OVERRIDE] == labels_features.OVERRIDE_FLAGGED

    # ---- export through the button (folder dialog answered by the test) -------------------------------
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    folder = tmp_path / "export"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    widget.export_button.click()
    result = widget.last_export
    n_flagged = int(widget.features()["flagged"].sum())
    assert result is not None and len(result.cell_files) == n_flagged
    assert all(p.exists() for p in result.paths) and str(folder) in widget.panel.status.text()
    # a second export into the same folder asks first; "No" leaves every file as it was
    stamps = {p: p.stat().st_mtime_ns for p in result.paths}
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    widget.export_button.click()
    assert asked and "no file was overwritten" in widget.panel.status.text()
    assert {p: p.stat().st_mtime_ns for p in result.paths} == stamps
