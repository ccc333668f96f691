"""Selecting a row centres AND zooms on its cell when the whole field is in view (it was ~20 px on screen)."""

import numpy as np

from napari_gradcamo._qt import layers as L


def test_a_row_click_zooms_in_on_a_small_cell(field_dock):
    viewer, widget, _, labels = field_dock
    viewer.window.resize(1366, 768)
    viewer.reset_view()
    table = widget.features()
    middle = np.asarray(labels.data.shape[-2:]) / 2
    dist = np.hypot(table["centroid_y"] - middle[0], table["centroid_x"] - middle[1])
    row = table.loc[dist.idxmin()]
    cam = L.camera(viewer)
    cam.zoom = float(cam.zoom) / 6  # as a 1080 × 1080 field fits the view: its cells are ~20 px
    before = float(cam.zoom)
    diameter = L.cell_diameter(row["volume_voxels"])
    scale = float(labels.scale[-1])
    assert diameter * scale * before < 0.2 * min(viewer.canvas.size)  # small on screen before
    widget.results.table.label_selected.emit(int(row["label"]))  # what a click on the row sends
    assert float(cam.zoom) > before
    on_screen = L.CELL_VIEW_DIAMETERS * diameter * scale * float(cam.zoom)
    assert on_screen >= 0.99 * L.CELL_VIEW_SHARE * min(viewer.canvas.size)
    world = L.world_position(labels, (row["centroid_z"], row["centroid_y"], row["centroid_x"]))
    center = np.asarray(cam.center[-2:])
    half = 0.5 * np.asarray(viewer.canvas.size) / float(cam.zoom)
    assert np.all(np.abs(center - world[1:]) <= 0.5 * half)  # near the middle of the view
    zoomed = float(cam.zoom)
    cam.zoom = 4 * zoomed  # the user zoomed in further: selecting keeps that zoom
    widget.results.table.label_selected.emit(int(table["label"].iloc[0]))
    assert float(cam.zoom) == 4 * zoomed
