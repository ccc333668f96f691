"""The Segment dock's defaults are SegmentationSettings' (one place for each default: dock, CLI and API agree)."""

from napari_gradcamo._qt.segment_widget import SegmentWidget
from napari_gradcamo.segment.cellpose import SegmentationSettings


def test_segment_dock_starts_from_the_settings_defaults(make_napari_viewer):
    widget = SegmentWidget(make_napari_viewer())
    defaults = SegmentationSettings()
    assert widget.model.currentText() == defaults.model
    assert widget.stitch.value() == defaults.stitch_threshold
    assert widget.min_size.value() == defaults.min_size
    assert widget.diameter.value() == (defaults.diameter or 0.0)
