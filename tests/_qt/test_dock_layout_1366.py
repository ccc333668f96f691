"""The audit dock at 1366 × 768 with a verdict shown keeps ≥ 8 table rows in view (2 before: issue 24), and
≥ 13 at 1920 × 1080, without hiding the run buttons, the verdict line or the flag rule."""

import pytest
from qtpy.QtWidgets import QApplication

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt.verdict_panel import verdict_text
from napari_gradcamo.audit.verdict import judge


def _settle():
    for _ in range(20):
        QApplication.processEvents()


def visible_rows(table) -> int:
    """Whole table rows the viewport has room for (the test field has fewer cells than that)."""
    view = table.view
    return view.viewport().height() // view.verticalHeader().defaultSectionSize()


def _shown(widget) -> bool:
    return widget.isVisible() and widget.visibleRegion().boundingRect().height() >= widget.height() - 1


@pytest.mark.parametrize(("size", "rows"), [((1366, 768), 8), ((1920, 1080), 13)])
def test_table_rows_in_view_with_the_verdict_shown(field_dock, size, rows):
    viewer, widget, images, labels = field_dock
    window = viewer.window._qt_window
    for _ in range(2):  # once to the size, once more after the dock settled
        viewer.window.resize(*size)
        _settle()
    widget.batch_size.setValue(4)
    assert widget.run()
    widget.verdict.judge_button.click()  # jobs run synchronously in these tests
    _settle()
    report = widget.verdict.report
    assert report is not None
    assert (window.width(), window.height()) == size

    assert visible_rows(widget.table) >= rows
    # the verdict line: in view, and the words of judge on the same inputs
    direct = judge(L.image_from_layers(images), L.labels_volume(labels), widget.bundle,
                   settings=widget.model_panel.audit_settings(widget.results.flag_rule()))
    assert direct.verdict == report.verdict
    assert _shown(widget.verdict.headline)
    assert widget.verdict.headline.text() == verdict_text(direct)[0] == f"Verdict: {direct.verdict}"
    # nothing a user needs is hidden: run buttons, the verdict's details toggle, the flag rule, the actions
    for needed in (widget.run_all_button, widget.run_selected_button, widget.save_button,
                   widget.verdict.judge_button, widget.verdict.details_button, widget.threshold,
                   widget.results.flag_on, widget.export_button, widget.summary):
        assert _shown(needed), needed
    # the evidence is one click away
    assert not widget.verdict.details.isVisible()
    widget.verdict.details_button.click()
    _settle()
    assert widget.verdict.details.isVisible() and widget.verdict.details.text() == verdict_text(direct)[1]


@pytest.mark.screenshot
@pytest.mark.parametrize(("size", "rows"), [((1366, 768), 8), ((1920, 1080), 13)])
def test_screenshot_of_the_shortcut_model_judged(make_napari_viewer, screenshot_dir, size, rows):
    """docs/screenshot_verdict_*.png: the bundled shortcut model on the demo field, audited and judged."""
    import numpy as np
    from imageio.v3 import imwrite

    from napari_gradcamo._demo_viewer import build_demo
    from napari_gradcamo.models.bundled import bundled_models

    if "shortcut" not in bundled_models():
        pytest.skip("the shortcut demo model is not bundled in this install")
    viewer = make_napari_viewer(show=True)
    widget = build_demo(viewer, model="shortcut")
    widget.synchronous = True
    for _ in range(2):
        viewer.window.resize(*size)
        _settle()
    assert widget.run()
    widget.verdict.judge_button.click()
    _settle()
    report = widget.verdict.report
    assert report is not None and widget.verdict.headline.text() == f"Verdict: {report.verdict}"
    assert visible_rows(widget.table) >= rows
    for layer in viewer.layers:
        if layer.name in ("ER", "RNA", "Mito"):
            layer.visible = False
    _settle()
    shot = viewer.screenshot(canvas_only=False)
    assert shot.shape[:2] == (size[1], size[0]) and np.asarray(shot)[..., :3].std() > 10
    imwrite(screenshot_dir / f"screenshot_verdict_{size[0]}x{size[1]}.png", shot)
