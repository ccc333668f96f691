"""The live results table stays responsive with 10 000 rows (model/view, proxy filter, vectorised sort)."""

import time

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt

from napari_gradcamo._qt.table import ResultsTable
from napari_gradcamo.audit import labels_features
from napari_gradcamo.output import results

N = 10_000


def big_table(n=N, seed=0):
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    score[::97] = np.nan
    table = pd.DataFrame({
        "label": np.arange(1, n + 1),
        "centroid_z": rng.random(n) * 20, "centroid_y": rng.random(n) * 2000, "centroid_x": rng.random(n) * 2000,
        "volume_voxels": rng.integers(100, 5000, n),
        "predicted_class": rng.choice(["control", "dose1", "dose2"], n),
        "probability": rng.random(n), "prob_control": rng.random(n), "prob_dose1": rng.random(n),
        "prob_dose2": rng.random(n), "target_class": "control",
        "gradcamo": score, "chance": rng.random(n) * 0.1,
        "status": results.STATUS_AUDITED,
    })
    return labels_features.reflag(labels_features.ensure_schema(table, ["control", "dose1", "dose2"]), 0.3)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_ten_thousand_rows_stay_responsive(qtbot):
    widget = ResultsTable()
    qtbot.addWidget(widget)
    widget.resize(700, 500)
    widget.show()
    table = big_table()
    colors = labels_features.label_colors(table, "flag")
    budget = 2.0  # seconds per operation on a busy 2-core CI machine; ~0.1 s on a desktop

    assert timed(lambda: widget.set_table(table, colors)) < budget
    qtbot.wait(10)
    assert widget.model.rowCount() == N and widget.proxy.rowCount() == N

    column = widget.model.columns.index("gradcamo")
    assert timed(lambda: widget.view.sortByColumn(column, Qt.SortOrder.DescendingOrder)) < budget
    first = [widget.model.table["gradcamo"].iloc[i] for i in range(3)]
    assert first == sorted(first, reverse=True)
    assert widget.model.table["gradcamo"].iloc[-1] != widget.model.table["gradcamo"].iloc[-1]  # NaN last

    assert timed(lambda: widget.flagged_only.setChecked(True)) < budget
    assert widget.proxy.rowCount() == int(table["flagged"].sum())
    widget.flagged_only.setChecked(False)
    assert timed(lambda: widget.filter_edit.setText("dose2")) < budget
    assert widget.proxy.rowCount() == int((table["predicted_class"] == "dose2").sum())
    assert timed(lambda: widget.filter_edit.setText("gradcamo < 0.05 and volume_voxels > 2500")) < budget
    expected = int(((table["gradcamo"] < 0.05) & (table["volume_voxels"] > 2500)).sum())
    assert widget.proxy.rowCount() == expected
    widget.filter_edit.setText("")

    seen = []
    widget.label_selected.connect(seen.append)
    assert timed(lambda: widget.select_label(N - 3)) < budget
    assert widget.current_label() == N - 3 and seen == []  # programmatic selection does not echo
    # a live update (one batch re-flagged) keeps the selection and the sort
    assert timed(lambda: widget.set_table(labels_features.reflag(table, 0.6), colors)) < budget
    assert widget.current_label() == N - 3
    assert widget.model.table["gradcamo"].iloc[0] == np.nanmax(table["gradcamo"])
    # scrolling through the whole table asks only for the visible cells
    assert timed(lambda: [widget.view.scrollToBottom(), qtbot.wait(1), widget.view.scrollToTop()]) < budget


def test_row_click_emits_label_and_checkbox_asks_widget(qtbot):
    widget = ResultsTable()
    qtbot.addWidget(widget)
    table = big_table(50)
    widget.set_table(table)
    seen, toggled = [], []
    widget.label_selected.connect(seen.append)
    widget.model.flag_toggled.connect(toggled.append)
    widget.view.selectRow(7)
    assert seen == [8]
    flag_col = widget.model.columns.index("flagged")
    index = widget.model.index(3, flag_col)
    assert widget.model.flags(index) & Qt.ItemFlag.ItemIsUserCheckable
    widget.model.setData(index, Qt.CheckState.Checked, Qt.ItemDataRole.CheckStateRole)
    assert toggled == [4]
    tip = widget.model.headerData(widget.model.columns.index("gradcamo"), Qt.Orientation.Horizontal,
                                  Qt.ItemDataRole.ToolTipRole)
    assert "Σcam" in tip
    assert "index" not in widget.model.columns and widget.model.columns[:3] == ["label", "flagged", "gradcamo"]


def test_ten_thousand_cells_in_the_audit_widget(make_napari_viewer):
    """Colours, features and threshold updates on a labels layer with 10 000 cells."""
    from napari_gradcamo._qt import AuditWidget

    viewer = make_napari_viewer()
    labels = np.zeros((1, 500, 800), np.uint32)
    ids = np.arange(1, N + 1).reshape(100, 100)
    labels[0, :500, :500] = np.kron(ids[:, :], np.ones((5, 5), np.uint32))[:500, :500]
    labels[0, :, 500:] = np.kron(ids[:, 50:], np.ones((5, 6), np.uint32))[:500, :300]
    present = np.unique(labels[labels > 0])
    layer = viewer.add_labels(labels)
    start = time.perf_counter()
    widget = AuditWidget(viewer)
    created = time.perf_counter() - start
    assert len(widget.features()) == len(present) and widget.table.model.rowCount() == len(present)
    table = widget.features()
    rng = np.random.default_rng(1)
    table["status"] = results.STATUS_AUDITED
    table["gradcamo"] = rng.random(len(table))
    start = time.perf_counter()
    layer.features = table
    refreshed = time.perf_counter() - start
    widget.results.flag_on.setCurrentIndex(widget.results.flag_on.findData("gradcamo"))  # the scores set above
    start = time.perf_counter()
    widget.threshold.setValue(0.25)
    rethresholded = time.perf_counter() - start
    assert created < 10 and refreshed < 5 and rethresholded < 5, (created, refreshed, rethresholded)
    assert abs(widget.features()["flagged"].mean() - 0.25) < 0.03
    assert len(layer.colormap.color_dict) >= len(present)


def test_same_rows_update_in_place_and_keep_the_selection(qtbot):
    """An audit filling in scores changes cells, not rows: the view keeps its selection and scroll position
    (no model reset); a new row order (sorted by the changing score) resets."""
    widget = ResultsTable()
    qtbot.addWidget(widget)
    widget.resize(700, 300)
    widget.show()
    table = big_table(400)
    widget.set_table(table, labels_features.label_colors(table, "flag"))
    widget.select_label(300)
    scroll = widget.view.verticalScrollBar().value()
    resets, changes = [], []
    widget.model.modelReset.connect(lambda: resets.append(1))
    widget.model.dataChanged.connect(lambda *_: changes.append(1))
    rescored = labels_features.reflag(table.assign(gradcamo=table["gradcamo"] * 0.5), 0.3)
    widget.set_table(rescored, labels_features.label_colors(rescored, "flag"))
    assert changes and not resets
    assert widget.selected_labels() == [300] and widget.view.verticalScrollBar().value() == scroll
    row = widget.model.row_of(300)
    shown = widget.model.data(widget.model.index(row, widget.model.columns.index("gradcamo")))
    assert shown == f"{rescored.set_index('label').loc[300, 'gradcamo']:.3f}" or shown == "–"
    widget.view.sortByColumn(widget.model.columns.index("gradcamo"), Qt.SortOrder.AscendingOrder)
    resets.clear()
    widget.set_table(table.assign(gradcamo=table["gradcamo"][::-1].to_numpy()), None)
    assert resets  # the sorted order changed
    assert widget.selected_labels() == [300]
