"""The Qt-free audit session: rule, maps, composite, edits (rescore, delete, undo), pending recomputes."""

import numpy as np
import pytest

from napari_gradcamo.audit.run import CellCam
from napari_gradcamo.audit.session import AuditSession
from napari_gradcamo.crops.extract import cell_table, crop_origin
from napari_gradcamo.output import results

CROP = (4, 16, 16)


def _field():
    labels = np.zeros((4, 32, 32), np.uint32)
    labels[1:3, 4:10, 4:10] = 1
    labels[1:3, 18:26, 18:26] = 2
    return labels


def _maps(labels, seed=0):
    rng = np.random.default_rng(seed)
    cells = {c.label: c for c in cell_table(labels)}
    return {lab: CellCam(lab, rng.random(CROP).astype(np.float32), crop_origin(cells[lab].centroid, CROP), CROP)
            for lab in cells}


@pytest.fixture
def audited():
    labels = _field()
    session = AuditSession(class_names=["a", "b"])
    session.add_maps(_maps(labels))
    table = session.apply_edit(session.fresh_table(labels), labels, [1, 2]).table  # scored from the maps
    return session, labels, table


def test_a_fresh_table_has_one_unaudited_row_per_label():
    session = AuditSession()
    table = session.fresh_table(_field())
    assert list(table["label"]) == [1, 2] and set(table["status"]) == {results.STATUS_NOT_AUDITED}


def test_the_rule_flags_and_is_recorded(audited):
    session, labels, table = audited
    assert (table["status"] == results.STATUS_AUDITED).all()
    scores = table.set_index("label")["gradcamo"]
    cut = float(scores.mean())
    flagged = session.set_rule(table, "gradcamo", cut)
    assert list(flagged.set_index("label")["flagged"]) == list(scores < cut)
    assert session.rule_record() == {"on": "gradcamo", "threshold": cut}
    with pytest.raises(ValueError, match="unknown score"):
        session.set_rule(table, "volume", 1.0)


def test_composite_follows_the_maps(audited):
    session, labels, table = audited
    first = session.composite(labels.shape)
    assert first.shape == labels.shape and first.max() > 0
    assert session.composite(labels.shape) is first  # cached
    session.forget_maps([1, 2])
    assert session.composite(labels.shape).max() == 0


def test_delete_then_undo_restores_the_row_and_the_map(audited):
    session, labels, table = audited
    before = table.set_index("label").loc[2, "gradcamo"]
    erased = labels.copy()
    erased[erased == 2] = 0
    gone = session.apply_edit(table, erased, [2])
    assert gone.removed == [2] and 2 not in session.cams and 2 in session.deleted
    back = session.apply_edit(gone.table, labels, [2])
    assert back.restored == [2] and 2 in session.cams and not session.deleted
    row = back.table.set_index("label").loc[2]
    assert row["status"] == results.STATUS_AUDITED and row["gradcamo"] == pytest.approx(before)


def test_a_moved_crop_waits_to_be_recomputed(audited):
    session, labels, table = audited
    moved = labels.copy()
    moved[moved == 1] = 0
    moved[1:3, 4:16, 4:16][moved[1:3, 4:16, 4:16] == 0] = 1  # grows: its centroid (and crop) moves
    outcome = session.apply_edit(table, moved, [1])
    assert outcome.moved == [1] and 1 not in session.cams
    assert session.take_pending([1, 2]) == [1] and session.take_pending([1, 2]) == []


def test_reset_forgets_everything(audited):
    session, labels, table = audited
    session.pending.add(1)
    session.reset()
    assert not session.cams and not session.deleted and not session.pending


def test_an_edit_measured_beforehand_gives_the_same_rows_as_measured_inline(audited):
    """The audit dock measures an edit in a worker (``measure_edit``) and only updates rows in the GUI thread."""
    import pandas as pd

    from napari_gradcamo.audit import labels_features

    session, labels, table = audited
    edited = labels.copy()
    edited[1:3, (4, 9), 4:10] = 0  # cell 1 shrinks evenly: its centroid and crop stay, its map rescores it
    edited[edited == 2] = 0  # cell 2 is deleted
    measured = labels_features.measure_edit(edited, [1, 2], session.edit_maps([1, 2]))
    assert measured.info[2] is None and set(measured.scores) == {1}
    twin = AuditSession(class_names=["a", "b"], cams=dict(session.cams))
    with_measure = session.apply_edit(table, edited, [1, 2], measured)
    inline = twin.apply_edit(table, edited, [1, 2])
    pd.testing.assert_frame_equal(with_measure.table, inline.table)
    assert with_measure.rescored == inline.rescored == [1] and with_measure.removed == inline.removed == [2]
    # the map kept for the deleted cell is offered for an undo, and the same score comes back
    back = labels_features.measure_edit(labels, [2], session.edit_maps([2]))
    assert set(back.scores) == {2}
    restored = session.apply_edit(with_measure.table, labels, [2], back)
    assert restored.restored == [2]
    assert restored.table.set_index("label").loc[2, "gradcamo"] == pytest.approx(table.set_index("label").loc[2, "gradcamo"])
