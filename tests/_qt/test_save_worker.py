"""Save audit… leaves the main thread free: the stains are stacked and the folder written in the worker, with
progress (it took 9.4 s on the main thread for a 153 MB field); the saved folder reads back the same."""

import threading

import numpy as np

from napari_gradcamo._qt import layers as L
from napari_gradcamo.output.results_folder import read_results_folder


def test_save_runs_in_the_worker(audited_dock, qtbot, tmp_path, monkeypatch):
    viewer, widget, labels = audited_dock
    stacked_on = []
    real = L.image_from_layers

    def recording(layers):
        stacked_on.append(threading.current_thread())
        return real(layers)

    monkeypatch.setattr(L, "image_from_layers", recording)
    widget.synchronous = False
    folder = tmp_path / "saved"
    assert widget.save_results(folder)
    assert widget.busy and not widget.save_button.isEnabled()  # no second save or run while it writes
    qtbot.waitUntil(lambda: not widget.panel.running, timeout=60_000)
    qtbot.waitUntil(lambda: "saved to" in widget.panel.status.text(), timeout=10_000)
    assert stacked_on and all(t is not threading.main_thread() for t in stacked_on)
    assert not widget.unsaved and widget.save_button.isEnabled()
    back = read_results_folder(folder)
    np.testing.assert_array_equal(back.labels, labels.data)
    assert set(back.cams) == set(widget.cams()) and len(back.table) == len(widget.features())
    assert not widget.save_results(folder)  # never overwritten: refused at once, before the worker
    assert "exists" in widget.panel.status.text()
