"""The docks fit the screen: with the audit and Compare models docks open, napari's window keeps the size
it is given (it grew to 1366 × 1299 / 1920 × 1563 before)."""

import pytest
from qtpy.QtWidgets import QApplication

from napari_gradcamo._sample_data import field_layers


def _settle():
    for _ in range(20):
        QApplication.processEvents()


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_audit_and_compare_docks_fit_the_window(make_napari_viewer, plugin_field, size):
    viewer = make_napari_viewer(show=True)
    for data, kw, kind in field_layers(plugin_field):
        getattr(viewer, f"add_{kind}")(data, **kw)
    viewer.window.add_plugin_dock_widget("napari-gradcamo", "Grad-CAMO audit")
    _, compare = viewer.window.add_plugin_dock_widget("napari-gradcamo", "Compare models")
    window = viewer.window._qt_window
    for _ in range(2):  # once to the size, once more after the docks settled
        viewer.window.resize(*size)
        _settle()
    assert (window.width(), window.height()) == size
    assert window.minimumSizeHint().height() <= size[1]
    assert compare.isVisible() and compare.run_button.visibleRegion().boundingRect().height() > 0


def test_compare_scatter_axes_fit_the_scores(make_napari_viewer):
    import numpy as np
    import pandas as pd

    from napari_gradcamo._qt.compare_widget import CompareWidget, score_limits

    assert score_limits(np.array([[0.03, 0.1], [0.46, np.nan]])) == pytest.approx((0.03 - 0.0215, 0.46 + 0.0215))
    assert score_limits(np.array([np.nan])) == (0.0, 1.0)
    compare = CompareWidget(make_napari_viewer())
    table = pd.DataFrame({"label": [1, 2, 3], "gradcamo_A": [0.03, 0.2, 0.46], "gradcamo_B": [0.05, 0.3, 0.4],
                          "predicted_class_A": ["a", "b", "a"], "model_A": "A", "model_B": "B"})
    compare._plot(table)
    ax = compare.figure.axes[0]
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(0.03 - 0.0215) and hi == pytest.approx(0.46 + 0.0215)
    assert ax.get_ylim() == pytest.approx((lo, hi))
