"""The GUI's confirmation before a checkpoint's own factory runs: module, function and file shown, nothing
imported before the user trusts it."""

import sys

from bad_inputs_common import custom_checkpoint
from napari_gradcamo._qt.trust_dialog import load_checkpoint_confirmed, trust_message_box
from napari_gradcamo.models.bundled import bundled_model_path


def test_dialog_names_module_function_and_file_and_imports_nothing(qtbot, tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "lab_factory_gui.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nfrom analytic_models import channel_mean_classifier as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = custom_checkpoint(tmp_path, "lab_factory_gui:build")
    shown = []

    def decline(box):
        qtbot.addWidget(box)
        box.show()
        qtbot.wait(50)
        box.grab().save(str(tmp_path / "trust_dialog.png"))
        shown.append(box.text())
        return False

    assert load_checkpoint_confirmed(None, ckpt, ask=decline) is None
    text = shown[0]
    assert "lab_factory_gui" in text and "build" in text and str(tmp_path / "lab_factory_gui.py") in text
    assert not marker.exists() and "lab_factory_gui" not in sys.modules
    bundle = load_checkpoint_confirmed(None, ckpt, ask=lambda box: True)
    assert type(bundle.model).__name__ == "ChannelMeanClassifier" and marker.exists()


def test_builtin_checkpoints_load_without_a_question(qtbot):
    def never(box):
        raise AssertionError("asked for a built-in architecture")

    assert load_checkpoint_confirmed(None, bundled_model_path("honest"), ask=never).metadata.class_names == ["control", "treated"]


def test_cancel_is_the_default_button(qtbot, tmp_path):
    box = trust_message_box(None, "numpy:savez", tmp_path / "x.safetensors")
    qtbot.addWidget(box)
    assert box.defaultButton() is not box.trust_button
    assert "numpy" in box.text() and "savez" in box.text()
