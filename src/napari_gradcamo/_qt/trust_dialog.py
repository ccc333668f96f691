"""Ask before a checkpoint's own model code runs: show module, function and file, import nothing before 'Trust'.

Hook for the audit and profile widgets: replace ``load_checkpoint(path)`` with
``load_checkpoint_confirmed(self, path)``; it returns None when the user declines.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Callable

from qtpy.QtWidgets import QMessageBox, QWidget

TRUST_BUTTON_TEXT = "Trust and run this code"


def trust_message_box(parent: QWidget | None, spec: str, checkpoint: str | Path) -> QMessageBox:
    """The confirmation dialog for ``spec`` ('package.module:function'), with Cancel as the default."""
    from napari_gradcamo.models.architectures import factory_location

    module, _, function = spec.partition(":")
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Run code named by a checkpoint?")
    box.setText(
        f"<b>{escape(Path(checkpoint).name)}</b> builds its model with Python code that is not part of "
        "napari-gradcamo. Running it can do anything your user account can do.<br><br>"
        f"Module: <code>{escape(module)}</code><br>Function: <code>{escape(function)}</code><br>"
        f"File: <code>{escape(factory_location(spec))}</code><br><br>"
        "Nothing has been imported yet. Trust it only if you know this code."
    )
    trust = box.addButton(TRUST_BUTTON_TEXT, QMessageBox.ButtonRole.AcceptRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.trust_button = trust
    return box


def _ask(box: QMessageBox) -> bool:
    box.exec()
    return box.clickedButton() is box.trust_button


def confirm_factory(parent: QWidget | None, path: str | Path,
                    ask: Callable[[QMessageBox], bool] = _ask) -> tuple[bool, str | None]:
    """Ask (in the GUI thread) before a checkpoint's own factory may run: ``(go on, trusted factory or None)``.
    ``(True, None)`` for a checkpoint that names no factory; ``(False, spec)`` when the user declines. Reads
    only the checkpoint's metadata; errors are :class:`CheckpointError` as from ``load_checkpoint``."""
    from napari_gradcamo.models.checkpoint import checkpoint_factory

    spec = checkpoint_factory(path)
    if spec is None:
        return True, None
    return ask(trust_message_box(parent, spec, path)), spec


def load_checkpoint_confirmed(parent: QWidget | None, path: str | Path, ask: Callable[[QMessageBox], bool] = _ask):
    """:func:`~napari_gradcamo.models.checkpoint.load_checkpoint`, asking first when the checkpoint names its
    own factory; None when the user declines. Errors are :class:`CheckpointError` as from ``load_checkpoint``."""
    from napari_gradcamo.models.checkpoint import load_checkpoint

    go_on, spec = confirm_factory(parent, path, ask)
    if not go_on:
        return None
    return load_checkpoint(path, trusted_factory=spec)
