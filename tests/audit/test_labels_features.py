"""Qt-free bookkeeping behind the plugin: labels.features rows, flags, edits, colours, CAM placement."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit.run import AuditSettings, CellCam, run_audit
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.output import results


@pytest.fixture(scope="module")
def audited(plugin_field, plugin_checkpoint):
    bundle = load_checkpoint(plugin_checkpoint)
    result = run_audit(plugin_field.image, plugin_field.labels, bundle, AuditSettings(batch_size=6))
    table = labels_features.merge_rows(labels_features.init_features(plugin_field.labels), result.table, 0.5)
    return table, result.cams


def test_init_features_one_row_per_label_not_audited(plugin_field):
    table = labels_features.init_features(plugin_field.labels)
    assert table["label"].tolist() == list(range(1, plugin_field.n_cells + 1))
    assert (table["index"] == table["label"]).all()  # napari's status bar looks rows up by 'index'
    assert (table["status"] == results.STATUS_NOT_AUDITED).all()
    assert not table["flagged"].any()
    assert table["volume_voxels"].tolist() == np.bincount(plugin_field.labels.ravel())[1:].tolist()
    for column in results.column_order([]):
        assert column in table


def test_init_features_keeps_rows_and_foreign_columns(plugin_field):
    existing = pd.DataFrame({"label": [1, 2, 99], "area_from_other_plugin": [10.0, 20.0, 30.0]})
    table = labels_features.init_features(plugin_field.labels, existing)
    assert 99 not in set(table["label"])  # label gone from the image: row dropped
    assert table.set_index("label").loc[2, "area_from_other_plugin"] == 20.0
    assert np.isnan(table.set_index("label").loc[3, "area_from_other_plugin"])


def test_merge_rows_threshold_and_hand_flags(audited):
    table, _ = audited
    assert (table["status"] == results.STATUS_AUDITED).all()
    low = table["gradcamo"].min()
    flagged = labels_features.reflag(table, low + 1e-6)
    assert flagged["flagged"].sum() == 1
    label = int(table.loc[table["gradcamo"].idxmax(), "label"])
    hand = labels_features.set_override(flagged, [label], labels_features.OVERRIDE_FLAGGED, low + 1e-6)
    assert hand["flagged"].sum() == 2
    # hand flags survive a threshold change and a re-merge of fresh rows
    moved = labels_features.reflag(hand, 0.0)
    assert moved.set_index("label").loc[label, "flagged"] and moved["flagged"].sum() == 1
    again = labels_features.merge_rows(moved, table[table["label"] == label], 0.0)
    assert again.set_index("label").loc[label, labels_features.OVERRIDE] == labels_features.OVERRIDE_FLAGGED
    # toggling twice hands the cell back to the threshold
    toggled = labels_features.toggle_flag(labels_features.toggle_flag(again, label, 0.0), label, 0.0)
    assert toggled.set_index("label").loc[label, "flagged"]
    cleared = labels_features.toggle_flag(toggled, label, 0.0)
    assert not cleared.set_index("label").loc[label, "flagged"]
    assert cleared.set_index("label").loc[label, labels_features.OVERRIDE] == ""


def test_restart_keeps_only_hand_flags(audited, plugin_field):
    table, _ = audited
    hand = labels_features.set_override(table, [2], labels_features.OVERRIDE_UNFLAGGED, 0.5)
    fresh = labels_features.restart(hand, plugin_field.labels, ["control", "treated"], 0.5)
    assert (fresh["status"] == results.STATUS_NOT_AUDITED).all()
    assert fresh.set_index("label").loc[2, labels_features.OVERRIDE] == labels_features.OVERRIDE_UNFLAGGED


def test_mask_edits_rescore_remove_add_and_move(audited, plugin_field):
    table, cams = audited
    labels = plugin_field.labels.copy()
    before = table.set_index("label")
    # erase a few voxels at the rim of cell 2: its crop stays put, so its cached CAM rescored it
    target = 2
    zz, yy, xx = np.nonzero(labels == target)
    rim = np.argsort(yy)[:40]
    labels[zz[rim], yy[rim], xx[rim]] = 0
    out = labels_features.apply_mask_edit(table, labels, {target}, cams, 0.5)
    assert out.rescored == [target] and not out.moved
    row = out.table.set_index("label").loc[target]
    assert row["volume_voxels"] == before.loc[target, "volume_voxels"] - 40
    from napari_gradcamo.audit.run import rescore

    assert row["gradcamo"] == pytest.approx(rescore(cams[target], labels).gradcamo)
    # delete cell 3 entirely: row removed
    labels[labels == 3] = 0
    out = labels_features.apply_mask_edit(out.table, labels, {3}, cams, 0.5)
    assert out.removed == [3] and 3 not in set(out.table["label"])
    # paint a new label 50 far from everything: a 'not audited' row
    labels[0:2, 0:4, 0:4] = 50
    out = labels_features.apply_mask_edit(out.table, labels, {50}, cams, 0.5)
    assert out.added == [50]
    new = out.table.set_index("label").loc[50]
    assert new["status"] == results.STATUS_NOT_AUDITED and new["volume_voxels"] == 32
    # move cell 4 by painting a blob far away: its crop moves, so it needs a new CAM
    labels[-3:, -6:, -6:] = 4
    labels[labels == 4] = 0
    labels[-3:, -6:, -6:] = 4
    out = labels_features.apply_mask_edit(out.table, labels, {4}, cams, 0.5)
    assert out.moved == [4]
    assert out.table.set_index("label").loc[4, "reason"] == labels_features.REASON_MOVED


def test_labels_in_edit_reads_napari_history_atoms():
    tuple_atom = ((np.array([0, 1]), np.array([2, 3])), np.array([0, 5]), 7)
    masked = SimpleNamespace(old_values=np.array([3, 3, 0]), new_value=0)
    assert labels_features.labels_in_edit([tuple_atom, masked]) == {3, 5, 7}
    assert labels_features.labels_in_edit([]) == set()


def test_colours_and_legend(audited):
    table, _ = audited
    table = labels_features.reflag(table, float(table["gradcamo"].median()))
    flags = labels_features.label_colors(table, "flag")
    assert flags[None] is not None and flags[0][3] == 0  # unknown labels grey, background transparent
    for _, row in table.iterrows():
        expected = labels_features.COLOR_FLAGGED if row["flagged"] else labels_features.COLOR_OK
        assert tuple(flags[int(row["label"])]) == pytest.approx(expected)
    scores = labels_features.label_colors(table, "score")
    best = int(table.loc[table["gradcamo"].idxmax(), "label"])
    worst = int(table.loc[table["gradcamo"].idxmin(), "label"])
    assert not np.allclose(scores[best], scores[worst])
    legend = labels_features.legend("flag", 0.4, table)
    assert "0.40" in legend.swatches[0][0] and f"({int(table['flagged'].sum())})" in legend.swatches[1][0]
    assert labels_features.legend("score", 0.4).gradient is not None


def test_crop_world_translate_and_composite():
    # a crop whose first voxel is image voxel (2, -3, 5) of a layer with scale (2, 0.5, 0.5), translate (10, 1, 1)
    t = labels_features.crop_world_translate((2, -3, 5), (2.0, 0.5, 0.5), (10.0, 1.0, 1.0))
    assert t.tolist() == [14.0, -0.5, 3.5]
    raw = np.zeros((2, 2, 2), np.float32)
    raw[1, 1, 1] = 4.0
    cam = CellCam(1, raw, (-1, 0, 0), (4, 4, 4))
    comp = labels_features.composite_cam((3, 3, 3), [cam])
    grid = cam.on_crop_grid() / cam.on_crop_grid().max()
    np.testing.assert_allclose(comp, grid[1:4, 0:3, 0:3], rtol=1e-6)  # clipped at the image border
    assert comp.max() <= 1.0 + 1e-6


def test_ensure_schema_is_idempotent_and_its_fast_path_copies(audited):
    """A table already in the schema is recognised (no rework) and gives exactly what the full path gives; a
    table that is not (unsorted, missing text, foreign columns) goes the full way."""
    table, _ = audited
    names = labels_features.class_names_of(table)
    messy = table.sample(frac=1.0, random_state=0).drop(columns=[labels_features.INDEX]).assign(other_tool=1.5)
    messy.loc[messy.index[:3], "reason"] = np.nan
    for raw in (table, messy, table.drop(columns=[labels_features.OVERRIDE]), table.iloc[::-1]):
        once = labels_features.ensure_schema(raw, names)
        assert labels_features._conformed(once, names)
        twice = labels_features.ensure_schema(once, names)
        pd.testing.assert_frame_equal(once, twice)
        twice.loc[0, "gradcamo"] = 123.0  # the fast path hands out a copy
        assert once.loc[0, "gradcamo"] != 123.0
    assert not labels_features._conformed(messy, names)
    assert not labels_features._conformed(table.iloc[::-1], names)
    assert not labels_features._conformed(table.assign(status=""), names)
