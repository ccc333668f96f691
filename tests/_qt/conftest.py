"""Fixtures of the dock tests: a real viewer with the small synthetic field and the audit dock."""

import os
import time
from pathlib import Path

import pytest

from napari_gradcamo._qt import AuditWidget
from napari_gradcamo._sample_data import field_layers
from napari_gradcamo.audit import run as core_audit


@pytest.fixture(autouse=True)
def autosave_in_tmp(tmp_path, monkeypatch):
    """napari closing at the end of a test autosaves an unsaved audit: keep it out of the home folder."""
    from napari_gradcamo._qt.audit_edits import AUTOSAVE_ENV

    folder = tmp_path / "autosave"
    monkeypatch.setenv(AUTOSAVE_ENV, str(folder))
    return folder


SCREENSHOT_DIR_ENV = "NAPARI_GRADCAMO_SCREENSHOT_DIR"


@pytest.fixture
def screenshot_dir(tmp_path):
    """Where a test saves the screenshot it takes: ``tmp_path``, so a test run never rewrites tracked files.

    ``make screenshots`` sets ``NAPARI_GRADCAMO_SCREENSHOT_DIR=docs`` to refresh the pictures in docs/ on
    purpose (it runs only the tests marked ``screenshot``).
    """
    folder = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def field_dock(make_napari_viewer, plugin_field, plugin_checkpoint):
    """(viewer, audit dock with the test checkpoint, image layers, labels layer); jobs run synchronously."""
    viewer = make_napari_viewer(show=True)
    added = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in field_layers(plugin_field)]
    widget = AuditWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.synchronous = True
    assert widget.load_model(plugin_checkpoint)
    widget.batch_size.setValue(1)
    return viewer, widget, added[:-1], added[-1]


@pytest.fixture
def audited_dock(field_dock):
    """(viewer, audit dock, labels layer) after an audit of every cell."""
    viewer, widget, _, labels = field_dock
    widget.batch_size.setValue(4)
    assert widget.run()
    return viewer, widget, labels


@pytest.fixture
def slow_audit(monkeypatch):
    """Make each batch take ≥ 0.4 s so a test can act (and the dock's timer gets turns) while the worker runs."""
    real = core_audit.iter_audit

    def slow(*args, **kwargs):
        for batch in real(*args, **kwargs):
            time.sleep(0.4)
            yield batch

    monkeypatch.setattr(core_audit, "iter_audit", slow)
