"""The audit dock's verdict: the words and numbers it shows are those of ``judge`` on the same image, masks and
model; it says what is missing instead of judging nothing; it shares the dock's job strip with the run."""

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt.verdict_panel import verdict_text
from napari_gradcamo.audit.verdict import VERDICTS, judge


def test_judge_shows_the_verdict_of_judge_on_the_same_inputs(field_dock):
    viewer, widget, images, labels = field_dock
    widget.verdict.judge_button.click()  # jobs run synchronously in these tests
    report = widget.verdict.report
    assert report is not None and report.verdict in VERDICTS
    assert widget.verdict.headline.text() == f"Verdict: {report.verdict}"
    direct = judge(L.image_from_layers(images), L.labels_volume(labels), widget.bundle,
                   settings=widget.model_panel.audit_settings(widget.results.flag_rule()))
    assert direct.verdict == report.verdict and direct.layer == report.layer
    headline, details, evidence = verdict_text(direct)
    assert widget.verdict.details.text() == details and widget.verdict.details.toolTip() == evidence
    for name, v in direct.classes.items():
        assert f"{name}: {v.verdict}" in widget.verdict.details.text()
    assert widget.verdict.panel is widget.panel  # one job strip: the run and the verdict never overlap


def test_judge_without_masks_says_what_is_missing(field_dock):
    viewer, widget, images, labels = field_dock
    viewer.layers.remove(labels)
    widget.verdict.judge_button.click()
    assert widget.verdict.report is None
    assert "Labels layer" in widget.panel.status.text()
