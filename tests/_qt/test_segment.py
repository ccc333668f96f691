"""Segment cells widget: parameter checks, errors, cancel, deleted layers (real cellpose)."""

import pytest

from napari_gradcamo._qt import SegmentWidget
from napari_gradcamo._sample_data import field_layers


@pytest.fixture
def setup(make_napari_viewer, plugin_field):
    viewer = make_napari_viewer()
    added = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in field_layers(plugin_field)]
    widget = SegmentWidget(viewer)
    widget.synchronous = True
    viewer.window.add_dock_widget(widget)
    return viewer, widget, added[:-1]


def generalist():
    from napari_gradcamo.segment.weights import WeightsError, generalist_cyto_model

    try:
        return str(generalist_cyto_model())
    except WeightsError as error:  # pragma: no cover
        pytest.skip(f"generalist cellpose weights unavailable: {error}")


def test_invalid_parameters_are_highlighted_not_crashed_on(setup):
    viewer, widget, images = setup
    n_layers = len(viewer.layers)
    widget.cyto.setCurrentIndex(widget.nucleus.currentIndex())  # the same stain twice
    assert not widget.run()
    assert set(widget.invalid_fields()) >= {"nucleus_channel", "cyto_channel"}
    assert "same channel" in widget.panel.status.text()
    widget.cyto.setCurrentIndex(widget.cyto.findData(3))
    assert widget.invalid_fields() == []  # a change clears the marks
    widget.stitch.setValue(0.0)
    assert not widget.run()
    assert widget.invalid_fields() == ["stitch_threshold"]
    widget.stitch.setValue(0.3)
    widget.nucleus.setCurrentIndex(0)
    widget.cyto.setCurrentIndex(0)  # five stains and none chosen
    assert not widget.run() and "cyto_channel" in widget.panel.status.text()
    widget.nucleus.setCurrentIndex(widget.nucleus.findData(0))
    widget.model.setEditText("/no/such/cellpose_model.pth")
    assert widget.run()  # the model is resolved in the worker; its error comes back as a message
    assert "does not exist" in widget.panel.status.text() and "model" in widget.invalid_fields()
    assert len(viewer.layers) == n_layers and widget.run_button.isEnabled()
    for layer in images:
        viewer.layers.remove(layer)
    assert not widget.run() and "No image layer" in widget.panel.status.text()


def test_cancel_between_slices_changes_no_layer(setup, qtbot):
    viewer, widget, images = setup
    widget.model.setEditText(generalist())
    widget.synchronous = False
    n_layers = len(viewer.layers)
    assert widget.run()
    qtbot.waitUntil(lambda: widget.panel.progress.value() >= 1, timeout=120_000)
    widget.panel.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=120_000)
    assert "cancelled" in widget.panel.status.text() and len(viewer.layers) == n_layers
    assert widget.output_layer is None and widget.run_button.isEnabled()


def test_source_layer_deleted_while_segmenting(setup, qtbot):
    viewer, widget, images = setup
    widget.model.setEditText(generalist())
    widget.synchronous = False
    n_layers = len(viewer.layers)
    assert widget.run()
    qtbot.waitUntil(lambda: widget.panel.progress.value() >= 1, timeout=120_000)
    viewer.layers.remove(images[0])
    qtbot.waitUntil(lambda: not widget.job.running, timeout=120_000)
    assert widget.output_layer is None and len(viewer.layers) == n_layers - 1
    assert "was deleted while cellpose ran" in widget.panel.status.text()


def test_two_dimensional_image(make_napari_viewer, plugin_field):
    viewer = make_napari_viewer()
    image = viewer.add_image(plugin_field.image.data[0, 6], name="DNA", scale=(0.5, 0.5), translate=(10, 20))
    widget = SegmentWidget(viewer)
    widget.synchronous = True
    widget.model.setEditText(generalist())
    widget.diameter.setValue(40)
    assert widget.nucleus.currentData() == 0 and widget.cyto.currentData() is None
    assert widget.run()
    out = widget.output_layer
    assert out is not None and out.ndim == 2 and out.data.shape == image.data.shape
    assert tuple(out.scale) == (0.5, 0.5) and tuple(out.translate) == (10, 20)
    assert out.data.max() >= 2
