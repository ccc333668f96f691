"""A reopened audit shows what was saved: the same verdict (flag rule), the stains' colours, the maps."""

import numpy as np
import pytest

from napari_gradcamo._qt import AuditWidget
from napari_gradcamo.output.results_folder import ResultsFolderError, read_results_folder


def _labels_of(layers):
    return [layer for layer in layers if layer.__class__.__name__ == "Labels"][0]


@pytest.fixture
def saved_under_raw_rule(audited_dock, tmp_path):
    """An audit saved under 'Grad-CAMO < t' with t between the scores (so the verdict differs from the default)."""
    viewer, widget, labels = audited_dock
    scores = np.sort(widget.features()["gradcamo"].dropna().to_numpy())
    threshold = round(float(scores[len(scores) // 2]) + 0.005, 2)
    widget.set_flag_rule("gradcamo", threshold)
    before = widget.features()[["label", "flagged"]].reset_index(drop=True)
    folder = tmp_path / "audit"
    assert widget.save_results(folder)
    return folder, threshold, before, widget


@pytest.mark.parametrize("dock_first", [False, True])
def test_reopened_audit_shows_the_saved_verdict(saved_under_raw_rule, make_napari_viewer, dock_first):
    folder, threshold, before, widget = saved_under_raw_rule
    assert read_results_folder(folder).flag_rule == {"on": "gradcamo", "threshold": threshold}
    viewer = make_napari_viewer()
    dock = AuditWidget(viewer) if dock_first else None
    layers = viewer.open(str(folder), plugin="napari-gradcamo")
    dock = dock or AuditWidget(viewer)
    assert dock.labels_layer is _labels_of(layers)
    assert dock.results.flag_on.currentData() == "gradcamo"
    assert dock.threshold.value() == pytest.approx(threshold)
    after = dock.features()[["label", "flagged"]].reset_index(drop=True)
    assert after.equals(before)
    assert 0 < int(after["flagged"].sum()) < len(after)  # the rule matters for this table


def test_reopened_stains_keep_their_colours(saved_under_raw_rule, make_napari_viewer):
    folder, *_ = saved_under_raw_rule
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-gradcamo")
    colours = {layer.name: layer.colormap.name for layer in layers if layer.__class__.__name__ == "Image"}
    assert colours == {"DNA": "blue", "ER": "green", "RNA": "yellow", "AGP": "red", "Mito": "magenta"}


def test_reopened_maps_are_in_memory_for_every_cell(saved_under_raw_rule, make_napari_viewer):
    folder, *_ = saved_under_raw_rule
    viewer = make_napari_viewer()
    AuditWidget(viewer)  # a dock already open when the folder is opened
    viewer.open(str(folder), plugin="napari-gradcamo")
    dock = AuditWidget(viewer)
    assert "not in memory" not in dock.panel.status.text()
    for label in dock.features()["label"].tolist():
        dock.select_label(int(label))
        assert "not in memory" not in dock.panel.status.text()
        assert dock.cell_cam_layer() is not None


def test_a_malformed_flag_rule_is_refused(saved_under_raw_rule):
    import json

    folder, *_ = saved_under_raw_rule
    manifest = json.loads((folder / "results.json").read_text())
    manifest["flag_rule"] = {"on": "os.system", "threshold": 0.1}
    (folder / "results.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsFolderError, match="flag_rule"):
        read_results_folder(folder)

