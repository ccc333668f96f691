"""The Profiles dock loads its model the one way the other docks do (the model panel, with the trust dialog),
and 'Compute profiles' is enabled as soon as the Audit dock holds a model (it reuses that one)."""

import sys

from qtpy.QtWidgets import QMessageBox

from bad_inputs_common import custom_checkpoint
from napari_gradcamo._qt import AuditWidget
from napari_gradcamo._qt.model_panel import ModelPanel
from napari_gradcamo._qt.profiles import ProfilesWidget
from napari_gradcamo._sample_data import field_layers


def test_compute_is_enabled_by_the_audit_docks_model_even_one_loaded_later(make_napari_viewer, plugin_field,
                                                                            plugin_checkpoint):
    viewer = make_napari_viewer()
    for data, kw, kind in field_layers(plugin_field):
        getattr(viewer, f"add_{kind}")(data, **kw)
    audit = AuditWidget(viewer)
    viewer.window.add_dock_widget(audit)
    profiles = ProfilesWidget(viewer)
    viewer.window.add_dock_widget(profiles)
    assert isinstance(profiles.model_panel, ModelPanel)  # the Audit and Compare docks' panel
    assert profiles.labels_layer is not None and not profiles.compute_button.isEnabled()
    assert "Audit dock" in profiles.compute_button.toolTip()
    assert audit.load_model(plugin_checkpoint)
    assert profiles.compute_button.isEnabled(), "the Audit dock's model enables 'Compute profiles'"
    assert profiles.model_panel.bundle is None  # nothing read a second time


def test_a_checkpoint_naming_its_own_code_asks_first_in_the_profiles_dock(make_napari_viewer, tmp_path,
                                                                          monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "lab_factory_profiles.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nfrom analytic_models import channel_mean_classifier as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    checkpoint = custom_checkpoint(tmp_path, "lab_factory_profiles:build")
    asked = []
    # the user closes the dialog without trusting: exec returns at once, no button was clicked
    monkeypatch.setattr(QMessageBox, "exec", lambda box: asked.append(box.text()) or 0)
    widget = ProfilesWidget(make_napari_viewer())
    assert not widget.load_model(checkpoint)
    assert asked and "lab_factory_profiles" in asked[0]
    assert widget.bundle is None and widget.model_panel.bundle is None
    assert not marker.exists() and "lab_factory_profiles" not in sys.modules
