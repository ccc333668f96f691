"""The plate's model-level verdict: judged on a sample of the run's fields, written to verdict.json, shown by
the report with the same words as the audit's verdict; a damaged verdict file is never shown as a verdict."""

import json
import re

import pytest

from napari_gradcamo.audit.verdict import VERDICTS, judge_fields
from napari_gradcamo.io.lazy import open_image, open_labels
from napari_gradcamo.models.bundled import bundled_model_path
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.plate.report import report_data, write_report
from napari_gradcamo.plate.run import make_client, run_plate
from napari_gradcamo.plate.sources import discover
from napari_gradcamo.plate.synthetic import write_synthetic_plate
from napari_gradcamo.plate.verdict import VERDICT_FILE, plate_verdict


@pytest.fixture(scope="module")
def plate_run(tmp_path_factory):
    """A 2-field plate audited with the bundled honest model (one thread, in process)."""
    source, layout = write_synthetic_plate(tmp_path_factory.mktemp("plate"), 2, sites_per_well=1)
    out = tmp_path_factory.mktemp("run")
    client, cluster = make_client(1, processes=False)
    try:
        run_plate(source, bundled_model_path("honest"), out, layout=layout, client=client)
    finally:
        client.close()
        cluster.close()
    return source, layout, out


def test_plate_verdict_is_the_audit_verdict_of_the_same_sample_and_the_report_shows_it(plate_run):
    source, layout, out = plate_run
    bundle = load_checkpoint(bundled_model_path("honest"))
    report = plate_verdict(out, bundle, sample=12, seed=3)
    assert report is not None and report.verdict in VERDICTS
    saved = json.loads((out / VERDICT_FILE).read_text())
    assert saved["verdict"] == report.verdict and saved["summary"] == report.summary_line()
    # the same judgement straight from the fields (same sample, same seed) gives the same answer
    fields = [(open_image(t.image), open_labels(t.image)) for t in discover(source, layout)]
    direct = judge_fields(bundle, fields, sample=12, seed=3)
    assert direct.verdict == report.verdict
    assert {c: v.verdict for c, v in direct.classes.items()} == {c: v["verdict"] for c, v in saved["classes"].items()}
    # the report states the verdict first, with each class's verdict
    data = report_data(out)
    assert data["verdict"]["verdict"] == report.verdict
    page = write_report(out).read_text()
    section = re.search(r'<section class="verdict" id="verdict">(.*?)</section>', page, re.S).group(1)
    assert report.verdict in section
    for name, v in report.classes.items():
        assert f"{name}: {v.verdict}" in section


def test_a_damaged_verdict_file_is_reported_as_damaged(plate_run):
    _, _, out = plate_run
    (out / VERDICT_FILE).write_text("{not json")
    data = report_data(out)
    assert data["verdict"]["verdict"] == "unreadable"
    assert "rerun" in data["verdict"]["reasons"][0]
