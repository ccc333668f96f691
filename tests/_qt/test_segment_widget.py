"""The Segment dock says a model error in GUI words (defect of issue 12): the model field marked, no terminal
colour codes, no CLI flag in the advice, no page-long dump."""

from napari_gradcamo._qt.segment_widget import GUI_OFFLINE_HINT, OUTPUT_NAME, SegmentWidget, gui_message
from napari_gradcamo._sample_data import field_layers
from napari_gradcamo.segment.cellpose import SegmentationSettings


def test_a_broken_model_file_is_refused_in_gui_words(make_napari_viewer, plugin_field, tmp_path):
    viewer = make_napari_viewer()
    for data, kw, kind in field_layers(plugin_field)[:-1]:
        getattr(viewer, f"add_{kind}")(data, **kw)
    widget = SegmentWidget(viewer)
    widget.synchronous = True
    assert widget.diameter.value() == (SegmentationSettings().diameter or 0.0)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a model" * 100)
    widget.model.setEditText(str(junk))
    widget.run()
    text = widget.panel.status.text()
    assert widget.invalid_fields() == ["model"]  # not 'mode' as well
    assert "\x1b" not in text and len(text) < 700
    assert GUI_OFFLINE_HINT in text and "--cellpose-model" not in text
    assert not any(layer.name == OUTPUT_NAME for layer in viewer.layers)


def test_gui_message_drops_colour_codes_and_cuts_long_dumps():
    text = gui_message("bad model\x1b[31m" + "x" * 1500 + "\x1b[0m")
    assert "\x1b" not in text and len(text) <= 400 and text.startswith("bad model")
