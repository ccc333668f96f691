"""Channel mapping: the message says which model channels are unmapped or share an image channel (and only
lists the channel lists when they differ); at 1366 × 768 the mapping boxes are scrolled into view; a
column title such as 'predicted_class' is never cut."""

import numpy as np
from qtpy.QtWidgets import QApplication

from napari_gradcamo._qt import AuditWidget
from napari_gradcamo._qt.model_panel import mapping_problem
from napari_gradcamo._sample_data import field_layers

STAINS = ["DNA", "ER", "RNA", "AGP", "Mito"]


def test_two_model_channels_on_one_image_channel_are_named():
    text = mapping_problem(STAINS, STAINS, [0, 0, 2, 3, 4])
    assert "image channel 0: DNA is used for two model channels (DNA and ER)" in text
    assert "the image has" not in text  # the same channels: the two lists would read the same
    text = mapping_problem(STAINS, ["a", "b", "c", "d", "e"], [None, 1, 2, 3, 4])
    assert "Choose an image channel for DNA" in text and "the image has a, b, c, d, e" in text
    assert mapping_problem(STAINS, STAINS, [0, 1, 2, 3, 4]) == ""


def _settle():
    for _ in range(20):
        QApplication.processEvents()


def test_mapping_boxes_and_full_column_titles_at_1366x768(make_napari_viewer, plugin_field, plugin_checkpoint):
    viewer = make_napari_viewer(show=True)
    for data, kw, kind in field_layers(plugin_field):
        if kind == "image":
            kw = {**kw, "name": kw["name"].lower() + "_stain", "metadata": {}}  # names the model does not know
        getattr(viewer, f"add_{kind}")(data, **kw)
    widget = AuditWidget(viewer)
    viewer.window.add_dock_widget(widget)
    for _ in range(2):
        viewer.window.resize(1366, 768)
        _settle()
    assert widget.load_model(plugin_checkpoint)
    _settle()
    assert "Choose an image channel for DNA" in widget.mapping_message.text()
    for w in (widget.mapping_message, widget.mapping_combos[0]):
        assert not w.visibleRegion().isEmpty(), w
    widget.set_channel_map([0, 0, 2, 3, 4])
    assert "used for two model channels (DNA and ER)" in widget.mapping_message.text()

    header = widget.table.view.horizontalHeader()
    columns = widget.table.model.columns
    section = columns.index("predicted_class")
    needed = header.fontMetrics().horizontalAdvance("predicted_class")
    assert header.sectionSize(section) > needed
    assert np.all([header.sectionSize(i) >= header.fontMetrics().horizontalAdvance(c) for i, c in enumerate(columns)])
