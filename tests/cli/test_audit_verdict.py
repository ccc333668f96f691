"""``gradcamo audit`` prints and writes the verdict (summary line on stderr, ``*_summary.json``,
``*_verdict.json`` and the per-cell evidence); ``--layer auto`` audits at the verdict's layer."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import tifffile

from napari_gradcamo.cli import main
from napari_gradcamo.models.bundled import bundled_model_path


@pytest.fixture(scope="module")
def field_files(tmp_path_factory):
    from napari_gradcamo.synthetic.experiment import scenario_fields

    field = scenario_fields("honest", seed=11, n_fields=2, first_well=1)[0]  # a treated well
    folder = tmp_path_factory.mktemp("field")
    image = folder / "field.ome.tif"
    tifffile.imwrite(image, field.image.data.transpose(1, 0, 2, 3), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": field.image.channel_names},
                               "PhysicalSizeZ": 2.0, "PhysicalSizeY": 1.5, "PhysicalSizeX": 1.5})
    tifffile.imwrite(folder / "masks.tif", field.labels)
    return image, folder / "masks.tif"


def audit(field_files, out, *extra):
    image, masks = field_files
    return main(["audit", str(image), "--model", str(bundled_model_path("honest")), "--masks", str(masks),
                 "--out", str(out), *extra])


def test_audit_reports_the_verdict(field_files, tmp_path, capsys):
    assert audit(field_files, tmp_path, "--verdict-sample", "12") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    verdict = report["verdict"]
    assert verdict["verdict"] in ("looks at the cells", "looks elsewhere", "inconclusive", "not assessable")
    assert verdict["cells"] == 12 and set(verdict["layer_agreement"]) == {"stage1", "stage2", "stage3"}
    assert "gradcamo: verdict: " + verdict["verdict"] in captured.err
    summary = json.loads(next(tmp_path.glob("*_summary.json")).read_text())
    assert summary["verdict"]["verdict"] == verdict["verdict"]
    cells = pd.read_csv(verdict["cells_file"])
    assert len(cells) == 12 and {"causal", "score", "flagged", "normalised@stage2"} <= set(cells.columns)
    # the numbers shown come from the per-cell evidence written beside them
    for name, per_class in verdict["classes"].items():
        mine = cells[cells["target_class"] == name]
        assert per_class["cells"] == len(mine)
        if per_class["causal_mean"] == per_class["causal_mean"]:  # not NaN
            assert per_class["causal_mean"] == pytest.approx(mine["causal"].mean())


def test_layer_auto_audits_at_the_verdicts_layer(field_files, tmp_path, capsys):
    assert audit(field_files, tmp_path, "--verdict-sample", "12", "--layer", "auto") == 0
    report = json.loads(capsys.readouterr().out)
    table = pd.read_csv(report["table"])
    assert set(table["target_layer"]) == {report["verdict"]["layer"]}


def test_no_verdict(field_files, tmp_path, capsys):
    assert audit(field_files, tmp_path, "--no-verdict") == 0
    report = json.loads(capsys.readouterr().out)
    assert "verdict" not in report and not list(tmp_path.glob("*_verdict.json"))
