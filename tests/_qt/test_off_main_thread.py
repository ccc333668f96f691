"""User actions whose heavy part runs in a worker thread (not napari's main thread), with the same results as
the inline (synchronous) path: loading a model, rescoring after a mask edit, deleting a cell.

Which thread did the work is read from what the code records (the name of the thread that ran the job), not
from mocks: the engine runs for real."""

import threading

import numpy as np
import pytest
import torch

from napari_gradcamo._qt import AuditWidget
from napari_gradcamo._qt.model_panel import ModelPanel
from napari_gradcamo._sample_data import field_layers
from napari_gradcamo.models.bundled import bundled_models

MAIN = threading.main_thread().name
WAIT_MS = 60_000


def _dock(make_napari_viewer, plugin_field, synchronous: bool):
    viewer = make_napari_viewer(show=True)
    added = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in field_layers(plugin_field)]
    widget = AuditWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.synchronous = synchronous
    return viewer, widget, added[-1]


def _same_model(panel: ModelPanel, reference: ModelPanel) -> None:
    assert panel.bundle.metadata.model_dump() == reference.bundle.metadata.model_dump()
    assert [i.name for i in panel.layer_infos] == [i.name for i in reference.layer_infos]
    assert panel.target_layer.currentData() == reference.target_layer.currentData()
    assert [panel.target_class.itemText(i) for i in range(panel.target_class.count())] == \
        [reference.target_class.itemText(i) for i in range(reference.target_class.count())]
    assert panel.model_info.text() == reference.model_info.text()
    assert panel.mapping_message.text() == reference.mapping_message.text()
    ours, theirs = panel.bundle.model.state_dict(), reference.bundle.model.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_a_checkpoint_loads_in_a_worker_with_the_choices_disabled_meanwhile(make_napari_viewer, qtbot, plugin_field,
                                                                             plugin_checkpoint):
    viewer, widget, _ = _dock(make_napari_viewer, plugin_field, synchronous=False)
    panel = widget.model_panel
    assert widget.load_model(plugin_checkpoint, background=True)  # started, as the Checkpoint combo does
    assert panel.loading and panel.bundle is None
    assert "Loading" in panel.model_info.text()
    assert not panel.model_combo.isEnabled() and not panel.open_button.isEnabled()
    assert not widget.run_all_button.isEnabled()
    assert not widget.run(), "no audit starts while the model loads"
    assert "loading" in widget.panel.status.text()
    qtbot.waitUntil(lambda: not panel.loading, timeout=WAIT_MS)
    assert panel.bundle is not None and widget.bundle is panel.bundle
    assert panel.last_load_thread and panel.last_load_thread != MAIN, panel.last_load_thread
    assert panel.model_combo.isEnabled() and widget.run_all_button.isEnabled()

    reference = ModelPanel(widget.picker)  # the inline (synchronous) load of the same file
    assert reference.load_model(plugin_checkpoint)
    assert reference.last_load_thread == MAIN
    _same_model(panel, reference)


def test_choosing_a_demo_model_in_the_combo_loads_it_off_the_main_thread(make_napari_viewer, qtbot, plugin_field):
    viewer, widget, _ = _dock(make_napari_viewer, plugin_field, synchronous=False)
    panel = widget.model_panel
    name, path = next(iter(bundled_models().items()))
    index = panel.model_combo.findData(str(path))
    assert index > 0
    loaded = []
    panel.model_changed.connect(loaded.append)
    panel.model_combo.activated.emit(index)
    qtbot.waitUntil(lambda: bool(loaded), timeout=WAIT_MS)
    assert panel.last_load_thread != MAIN
    assert panel.model_combo.currentIndex() == index and panel.source == str(path)
    reference = ModelPanel(widget.picker)
    assert reference.load_model(path)
    _same_model(panel, reference)


def test_a_bad_checkpoint_chosen_by_the_user_gives_the_same_message_as_inline(make_napari_viewer, qtbot, tmp_path,
                                                                              plugin_field, plugin_checkpoint):
    viewer, widget, _ = _dock(make_napari_viewer, plugin_field, synchronous=False)
    panel = widget.model_panel
    assert panel.load_model(plugin_checkpoint)  # inline
    loaded = panel.bundle
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00not a checkpoint")
    for bad, word in ((pickled, "Refused"), (corrupt, "corrupt")):
        panel.load_model(bad, background=True)
        qtbot.waitUntil(lambda: not panel.loading, timeout=WAIT_MS)
        background = panel.model_info.text()
        assert word in background and "is kept" in background and panel.bundle is loaded
        assert not panel.load_model(bad)
        assert panel.model_info.text() == background and panel.bundle is loaded
    assert panel.model_combo.isEnabled()


@pytest.fixture
def audited(make_napari_viewer, plugin_field, plugin_checkpoint):
    """(viewer, dock, labels) after an inline audit of every cell; jobs then run in workers."""
    viewer, widget, labels = _dock(make_napari_viewer, plugin_field, synchronous=True)
    assert widget.load_model(plugin_checkpoint)
    widget.batch_size.setValue(4)
    assert widget.run()
    widget.synchronous = False
    return viewer, widget, labels


def _score_columns(table):
    return table[["label", "status", "gradcamo", "volume_voxels", "flagged"]].reset_index(drop=True)


def test_rescoring_after_a_paint_edit_runs_in_a_worker_and_matches_the_inline_result(
        make_napari_viewer, qtbot, plugin_field, plugin_checkpoint, audited):
    import pandas as pd

    viewer, widget, labels = audited
    label = int(widget.features()["label"].iloc[0])
    zyx = np.argwhere(np.asarray(labels.data) == label)
    z, y, x = zyx[len(zyx) // 2]
    before = widget.features()
    # erase one voxel row inside the cell: the crop does not move, its cached map rescores it
    where = np.nonzero(np.asarray(labels.data)[z, y] == label)
    labels.data_setitem((np.full_like(where[0], z), np.full_like(where[0], y), where[0]), 0)
    qtbot.waitUntil(lambda: widget.last_edit_thread != "" and not widget.editing, timeout=WAIT_MS)
    assert widget.last_edit_thread != MAIN, widget.last_edit_thread
    after = widget.features()
    assert "rescored" in widget.panel.status.text()
    row_before = before.set_index("label").loc[label]
    row_after = after.set_index("label").loc[label]
    assert int(row_after["volume_voxels"]) < int(row_before["volume_voxels"])

    # the inline path, on a second dock given the same edit, gives the same table
    viewer2, inline, labels2 = _dock(make_napari_viewer, plugin_field, synchronous=True)
    assert inline.load_model(plugin_checkpoint)
    inline.batch_size.setValue(4)
    assert inline.run()
    labels2.data_setitem((np.full_like(where[0], z), np.full_like(where[0], y), where[0]), 0)
    qtbot.waitUntil(lambda: inline.last_edit_thread == MAIN and not inline.editing, timeout=WAIT_MS)
    pd.testing.assert_frame_equal(_score_columns(after), _score_columns(inline.features()))


def test_delete_cell_searches_in_a_worker_and_undo_brings_the_score_back(qtbot, audited):
    viewer, widget, labels = audited
    victim = int(widget.features()["label"].iloc[1])
    before = widget.features().set_index("label").loc[victim]
    voxels = int((np.asarray(labels.data) == victim).sum())
    widget.table.select_label(victim)
    assert widget.delete_selected_cells()
    qtbot.waitUntil(lambda: victim not in set(widget.features()["label"]) and not widget.editing,
                    timeout=WAIT_MS)
    assert widget.last_delete_thread != MAIN, widget.last_delete_thread
    assert widget.last_edit_thread != MAIN
    assert not (np.asarray(labels.data) == victim).any()
    assert victim not in widget.cams()
    labels.undo()
    qtbot.waitUntil(lambda: victim in set(widget.features()["label"]) and not widget.editing, timeout=WAIT_MS)
    assert int((np.asarray(labels.data) == victim).sum()) == voxels
    after = widget.features().set_index("label").loc[victim]
    assert after["status"] == before["status"]
    assert after["gradcamo"] == pytest.approx(before["gradcamo"])
    assert victim in widget.cams()


def test_the_dock_compiles_napari_label_colouring_off_the_main_thread(make_napari_viewer, qtbot, plugin_field,
                                                                      plugin_checkpoint):
    """napari's label colouring (numba) compiles in a thread of the dock's own; the cells get the same colours
    as with an inline (synchronous) dock once it is done."""
    from napari.utils.colormaps import DirectLabelColormap

    from napari_gradcamo._qt import warmup

    viewer, widget, labels = _dock(make_napari_viewer, plugin_field, synchronous=False)
    dtype = np.asarray(labels.data).dtype
    assert dtype.itemsize >= 4  # a label image whose colouring napari compiles
    assert dtype in warmup._WARM, "the dock started the compilation"
    ready = warmup.warm_label_colours(dtype)
    qtbot.waitUntil(ready.is_set, timeout=WAIT_MS)
    assert warmup.WARMED_BY.get(dtype, MAIN) != MAIN, warmup.WARMED_BY
    qtbot.waitUntil(lambda: isinstance(labels.colormap, DirectLabelColormap), timeout=WAIT_MS)
    viewer2, inline, labels2 = _dock(make_napari_viewer, plugin_field, synchronous=True)
    inline._refresh_colours()
    ours, theirs = labels.colormap.color_dict, labels2.colormap.color_dict
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key])


def test_the_profiles_dock_loads_its_model_off_the_main_thread(make_napari_viewer, qtbot, plugin_checkpoint):
    from napari_gradcamo._qt.profiles import ProfilesWidget

    widget = ProfilesWidget(make_napari_viewer())
    widget.model_panel.synchronous = False
    assert widget.load_model(plugin_checkpoint, background=True)
    assert widget.model_panel.loading
    qtbot.waitUntil(lambda: not widget.model_panel.loading, timeout=WAIT_MS)
    assert widget.model_panel.last_load_thread not in ("", MAIN)
    assert widget.bundle is widget.model_panel.bundle is not None


def test_a_checkpoint_naming_its_own_code_is_read_in_a_worker_and_asked_about_in_the_gui_thread(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The worker reads the metadata only and stops; the question comes in the GUI thread; 'trust' loads it in a
    second job, 'cancel' imports nothing and leaves the model box as it was."""
    import sys

    from bad_inputs_common import custom_checkpoint
    from napari_gradcamo._qt import trust_dialog

    marker = tmp_path / "imported.txt"
    (tmp_path / "lab_factory_worker.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nfrom analytic_models import channel_mean_classifier as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = custom_checkpoint(tmp_path, "lab_factory_worker:build")
    panel = ModelPanel(AuditWidget(make_napari_viewer()).picker)
    panel.synchronous = False
    asked_in = []
    answer = {"trust": False}

    def ask(box):
        asked_in.append(threading.current_thread().name)
        return answer["trust"]

    monkeypatch.setattr(trust_dialog, "_ask", ask)
    before = panel.model_info.text()
    assert panel.load_model(checkpoint, background=True)
    qtbot.waitUntil(lambda: not panel.loading, timeout=WAIT_MS)
    assert asked_in == [MAIN] and panel.bundle is None and panel.model_info.text() == before
    assert not marker.exists() and "lab_factory_worker" not in sys.modules
    answer["trust"] = True
    assert panel.load_model(checkpoint, background=True)
    qtbot.waitUntil(lambda: not panel.loading, timeout=WAIT_MS)
    assert asked_in == [MAIN, MAIN] and panel.bundle is not None and marker.exists()
    assert panel.last_load_thread != MAIN
