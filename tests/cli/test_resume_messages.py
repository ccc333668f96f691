"""--resume refusals name the file, the differing settings and the fix; export-bioimageio names a missing
folder; --max-padded-fraction is a fraction (issue 23: 'Parquet magic bytes not found', 'the settings differ',
exit 1 naming a temporary file, 2 accepted)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

from napari_gradcamo.cli import main
from napari_gradcamo.output import results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bad_inputs_common import HONEST, assert_refused, audit_argv, run, snapshot, synthetic_fields  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_fields(tmp_path_factory)


@pytest.fixture
def interrupted(data, tmp_path, capsys):
    """An audit whose table is marked incomplete, as an interrupted run leaves it."""
    out = tmp_path / "out"
    assert main(audit_argv(data, out, "--threshold", "0.1")) == 0
    capsys.readouterr()
    parquet = next(out.glob("*_gradcamo.parquet"))
    record = {**results.read_run_record(parquet), "completed": False}
    table = pd.read_parquet(parquet)
    results.write_table(table.iloc[:2], out, parquet.stem, record)
    return out, parquet


def test_resume_after_a_truncated_parquet_names_the_file_and_the_fix(data, interrupted, capsys):
    out, parquet = interrupted
    parquet.write_bytes(parquet.read_bytes()[:200])
    before = snapshot(out)
    code, err = run(audit_argv(data, out, "--threshold", "0.1", "--resume"), capsys)
    assert_refused(code, err, str(parquet), "damaged or truncated", "delete it and rerun without --resume")
    assert snapshot(out) == before


def test_resume_names_each_differing_setting_with_both_values(data, interrupted, capsys):
    out, _ = interrupted
    code, err = run(audit_argv(data, out, "--threshold", "0.3", "--batch-size", "2", "--resume"), capsys)
    assert_refused(code, err, "Cannot resume", "audit.threshold: 0.1 → 0.3", "audit.batch_size: 8 → 2",
                   "--overwrite")


def test_export_bioimageio_into_a_missing_folder(tmp_path, capsys):
    target = tmp_path / "missing" / "model.zip"
    code, err = run(["export-bioimageio", HONEST, "--out", target], capsys)
    assert_refused(code, err, f"the folder {target.parent} does not exist", "mkdir -p")
    assert ".tmp" not in err and not target.parent.exists()
    code, err = run(["export-bioimageio", HONEST, "--out", tmp_path], capsys)
    assert_refused(code, err, "is a folder", "model.zip")


@pytest.mark.parametrize("value, phrase", [("2", "must lie in 0..1"), ("-0.1", "must lie in 0..1"),
                                           ("nan", "must be a finite number")])
def test_max_padded_fraction_must_be_a_fraction(data, tmp_path, capsys, value, phrase):
    out = tmp_path / "out"
    code, err = run(["train", data["manifest"], "--out", out, "--max-padded-fraction", value], capsys)
    assert_refused(code, err, "--max-padded-fraction", phrase)
    assert "unrecognized" not in err
    assert snapshot(out) == {}


def test_build_cache_refuses_a_fraction_outside_0_1(data, tmp_path):
    from napari_gradcamo.crops.cache import build_cache
    from napari_gradcamo.segment.field_list import read_manifest

    with pytest.raises(ValueError, match=r"max_padded_fraction \(--max-padded-fraction\) 2 must be a fraction"):
        build_cache(read_manifest(data["manifest"]), (8, 32, 32), tmp_path / "c", max_padded_fraction=2)


def test_setting_differences_names_nested_fields_both_ways():
    from napari_gradcamo.output.provenance import setting_differences

    old = {"audit": {"threshold": 0.1, "method": "gradcam"}, "axes": None}
    new = {"audit": {"threshold": 0.3, "method": "gradcam"}, "axes": "ZCYX", "extra": 1}
    assert setting_differences(old, new) == ["audit.threshold: 0.1 → 0.3", "axes: None → 'ZCYX'",
                                             "extra: '(absent)' → 1"]
    assert setting_differences(old, old) == []
