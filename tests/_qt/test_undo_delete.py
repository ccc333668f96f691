"""Undo after 'Delete cell' gives the cell back with its score and its map (not 'not audited')."""

import numpy as np
import pytest

from napari_gradcamo.audit import labels_features
from napari_gradcamo.output import results


def test_undo_after_delete_restores_the_score_and_the_map(audited_dock, qtbot):
    viewer, widget, labels = audited_dock
    victim = int(widget.features()["label"].iloc[1])
    before = labels_features.row_of(widget.features(), victim)
    assert before["status"] == results.STATUS_AUDITED
    widget.table.select_label(victim)
    assert widget.delete_selected_cells()
    qtbot.waitUntil(lambda: victim not in set(widget.features()["label"]))
    assert victim not in widget.cams()
    labels.undo()
    qtbot.waitUntil(lambda: labels_features.row_of(widget.features(), victim) is not None)
    after = labels_features.row_of(widget.features(), victim)
    assert after["status"] == results.STATUS_AUDITED
    assert after["gradcamo"] == pytest.approx(before["gradcamo"])
    assert after["flagged"] == before["flagged"]
    assert victim in widget.cams()
    assert "back with their earlier results" in widget.panel.status.text()
    np.testing.assert_array_equal(widget.features()["label"], np.sort(widget.features()["label"]))
