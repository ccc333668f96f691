"""apply_mask_edit: a label that comes back (undo after delete) gets its earlier row and map back."""

import numpy as np
import pytest

from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit.run import CellCam
from napari_gradcamo.crops.extract import cell_table, crop_origin
from napari_gradcamo.output import results


def _field():
    labels = np.zeros((4, 24, 24), np.uint32)
    labels[1:3, 2:8, 2:8] = 1
    labels[1:3, 12:20, 12:20] = 2
    return labels


def _audited_table(labels, cams, rule):
    table = labels_features.init_features(labels, None, ["a", "b"], rule)
    outcome = labels_features.apply_mask_edit(table, labels, [1, 2], cams, rule)  # rescoring = audited rows
    return outcome.table


def test_deleted_then_restored_label_keeps_its_score():
    labels = _field()
    rng = np.random.default_rng(0)
    cells = {c.label: c for c in cell_table(labels)}
    cams = {lab: CellCam(lab, rng.random((4, 16, 16)).astype(np.float32),
                         crop_origin(cells[lab].centroid, (4, 16, 16)), (4, 16, 16)) for lab in (1, 2)}
    rule = labels_features.FlagRule(0.0, "normalised")
    table = _audited_table(labels, cams, rule)
    assert (table["status"] == results.STATUS_AUDITED).all()
    score = float(table.set_index("label").loc[2, "gradcamo"])

    deleted_labels = labels.copy()
    deleted_labels[deleted_labels == 2] = 0
    gone = labels_features.apply_mask_edit(table, deleted_labels, [2], cams, rule)
    assert gone.removed == [2] and list(gone.table["label"]) == [1]
    kept = {2: (gone.removed_rows[2], cams[2])}

    back = labels_features.apply_mask_edit(gone.table, labels, [2], {1: cams[1]}, rule, kept)
    assert back.restored == [2] and back.added == [] and back.rescored == [2]
    row = back.table.set_index("label").loc[2]
    assert row["status"] == results.STATUS_AUDITED and row["gradcamo"] == pytest.approx(score)
    assert list(back.table["label"]) == [1, 2] and back.table["label"].dtype == np.int64


def test_a_new_label_without_a_kept_row_is_not_audited():
    labels = _field()
    rule = labels_features.FlagRule(0.0, "normalised")
    table = labels_features.init_features(labels[:, :, :10], None, [], rule)
    out = labels_features.apply_mask_edit(table, labels, [2], {}, rule, {})
    assert out.added == [2] and out.restored == []
    assert out.table.set_index("label").loc[2, "status"] == results.STATUS_NOT_AUDITED


def test_a_new_cell_painted_with_a_deleted_id_is_not_restored():
    labels = _field()
    rule = labels_features.FlagRule(0.0, "normalised")
    table = labels_features.init_features(labels, None, [], rule)
    erased = labels.copy()
    erased[erased == 2] = 0
    gone = labels_features.apply_mask_edit(table, erased, [2], {}, rule)
    repainted = erased.copy()
    repainted[0, 0:2, 0:2] = 2  # another cell, same id
    out = labels_features.apply_mask_edit(gone.table, repainted, [2], {}, rule, {2: (gone.removed_rows[2], None)})
    assert out.restored == [] and out.added == [2]
    assert out.table.set_index("label").loc[2, "reason"] == labels_features.REASON_NEW
