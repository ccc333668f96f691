"""The Plate dock: a plate run's well heatmap, a well's fields, one field loaded lazily with the audit dock ready."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def plate_run(tmp_path_factory):
    from napari_gradcamo.models.bundled import bundled_model_path
    from napari_gradcamo.plate.run import make_client, run_plate
    from napari_gradcamo.plate.synthetic import write_synthetic_plate

    folder = tmp_path_factory.mktemp("plate")
    source, layout = write_synthetic_plate(folder, 6, sites_per_well=2, shape=(12, 80, 80), n_cells=8)
    client, cluster = make_client(1, processes=False)
    try:
        run_plate(source, bundled_model_path("honest"), folder / "out", layout=layout, client=client)
    finally:
        client.close()
        cluster.close()
    return folder / "out"


@pytest.mark.screenshot
def test_plate_dock_heatmap_and_loading_a_field(make_napari_viewer, qtbot, plate_run, screenshot_dir):
    import dask.array as da

    from napari_gradcamo._qt.plate_dock import PlateDock
    from napari_gradcamo.io.lazy import open_labels
    from napari_gradcamo.plate import store

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1100)
    dock = PlateDock(viewer)
    viewer.window.add_dock_widget(dock, name="Plate", area="left")
    assert not dock.open_results(plate_run.parent / "nowhere") and "run.json" in dock.status.text()
    assert dock.open_results(plate_run)
    medians = dock.well_medians("SYN01")
    assert len(medians) == 3 and medians.notna().all()
    row, column = 1, 2  # well B03
    item = dock.heatmap.item(row, column)
    assert item.data(0x0100) == "B03" and "median" in item.toolTip()
    colours = {dock.heatmap.item(1, c).background().color().name() for c in range(1, 4)}
    assert len(colours) > 1, "wells with different medians get different colours"
    dock.heatmap.cellClicked.emit(row, column)  # what a click on the well does
    assert dock.fields.count() == 2 and "8 cells" in dock.fields.item(1).text()
    dock.fields.setCurrentRow(1)
    dock.load_button.click()
    qtbot.wait(200)
    images = [layer for layer in viewer.layers if layer.__class__.__name__ == "Image" and "SYN01 B03 2" in layer.name]
    assert len(images) == 5 and all(isinstance(layer.data, da.Array) for layer in images), "channels stay lazy"
    labels_layer = viewer.layers["SYN01 B03 2 masks"]
    task = dock.tasks["SYN01/B03/2"]
    np.testing.assert_array_equal(labels_layer.data, open_labels(task.image))
    widget = dock.audit_widget
    assert widget is not None and widget.labels_layer is labels_layer and widget.bundle is not None
    assert set(widget.cams(labels_layer)) == set(store.read_field_maps(plate_run, task))
    table = widget.features()
    assert (table["status"] == "audited").sum() == 8
    expected = dock.cells[dock.cells["field"] == "SYN01/B03/2"].sort_values("label")
    np.testing.assert_allclose(table.sort_values("label")["gradcamo"].to_numpy(), expected["gradcamo"].to_numpy())
    widget.select_label(int(expected["label"].iloc[0]), center=True)
    qtbot.wait(200)
    assert widget.cell_cam_layer() is not None, "the stored map is shown for the selected cell"
    everyone = widget.all_cells_layer()
    assert everyone is not None and everyone.visible and float(np.asarray(everyone.data).max()) > 0, \
        "the field's stored maps fill the all-cells layer"
    assert "no Grad-CAM" not in widget.panel.status.text()
    viewer.screenshot(str(screenshot_dir / "screenshot_plate.png"), canvas_only=False)
