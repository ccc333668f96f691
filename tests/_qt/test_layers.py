"""Camera helpers of the docks (``_qt/layers.py``): centring on a cell keeps the field in view."""

import numpy as np

from napari_gradcamo._qt import layers as L


def test_centring_on_a_border_cell_keeps_the_field_in_view(audited_dock):
    viewer, widget, labels = audited_dock
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
