"""Helpers shared by the dock tests (tests/_qt)."""

from napari_gradcamo.output import results


def audited(widget) -> int:
    """How many cells of the dock's labels layer are audited."""
    return int((widget.features()["status"] == results.STATUS_AUDITED).sum())
