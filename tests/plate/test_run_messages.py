"""gradcamo plate run: refusals before any worker starts, one line per failed field, a closing summary
(issue 23: an untrusted checkpoint gave 4 worker tracebacks after the cluster started; a broken field filled
stderr with "Compute Failed … Traceback" and ended with no summary)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.models.bundled import bundled_model_path
from napari_gradcamo.models.metadata import CheckpointError
from napari_gradcamo.plate.run import iter_plate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bad_inputs_common import assert_refused, custom_checkpoint, run, snapshot  # noqa: E402

MODEL = bundled_model_path("honest")


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """A folder of 3 TIFF fields with masks; the masks of one field do not fit its image."""
    import tifffile

    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    folder = tmp_path_factory.mktemp("plate")
    write_synthetic_manifest(folder, n_fields=3, sites_per_well=3)
    bad = sorted((folder / "images").glob("*_s2_masks.tif"))[0]
    tifffile.imwrite(bad, np.ones((3, 10, 10), np.uint16), photometric="minisblack")
    return folder / "images"


def test_an_untrusted_checkpoint_is_refused_before_any_worker_starts(tmp_path, capsys, fields):
    ckpt = custom_checkpoint(tmp_path, "os:system")
    out = tmp_path / "out"
    code, err = run(["plate", "run", fields, "--model", ckpt, "--out", out, "--workers", "1"], capsys)
    assert_refused(code, err, "os:system", "--trust-factory")
    assert err.count("gradcamo: error") == 1
    assert snapshot(out) == {}  # refused before the run record was written: nothing started
    with pytest.raises(CheckpointError, match="os:system"):
        next(iter_plate(fields, ckpt, out))


@pytest.mark.parametrize("argv, phrases", [
    (["--workers", "0"], ["--workers", "must be at least 1"]),
    (["--torch-threads", "0"], ["--torch-threads", "must be at least 1"]),
    (["--threshold", "nan"], ["--threshold", "finite"]),
    (["--device", "cuda:7"], ["--device cuda:7", "no such device"]),
])
def test_plate_options_are_refused_before_anything_starts(tmp_path, capsys, fields, argv, phrases):
    out = tmp_path / "out"
    code, err = run(["plate", "run", fields, "--model", MODEL, "--out", out, *argv], capsys)
    assert_refused(code, err, *phrases)
    assert snapshot(out) == {}


def test_api_preflight_names_the_argument(tmp_path, fields):
    with pytest.raises(ValueError, match="workers .* must be a whole number ≥ 1, got 0"):
        next(iter_plate(fields, MODEL, tmp_path / "out", workers=0))
    with pytest.raises(ValueError, match="method None must be the name of a CAM method"):
        next(iter_plate(fields, MODEL, tmp_path / "out", AuditSettings(method=None)))


def test_a_broken_field_is_named_once_and_summarised(tmp_path, capfd, fields):
    from napari_gradcamo.cli import main

    out = tmp_path / "out"
    code = main(["plate", "run", str(fields), "--model", str(MODEL), "--out", str(out), "--workers", "1"])
    err = capfd.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "Compute Failed" not in err
    failed = [line for line in err.splitlines() if " failed: " in line and line.startswith("gradcamo: field ")]
    assert len(failed) == 1 and "/2 failed: ImageError: Labels shape (3, 10, 10)" in failed[0]
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("gradcamo: 2 of 3 fields done; 1 failed: ") and "rerun the same command" in summary
    assert len(list((out / "fields").rglob("*.parquet"))) == 2  # the good fields are kept


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill the disk needs root")
def test_a_full_disk_is_a_failed_field_per_field_not_a_traceback(tmp_path, capfd, fields):
    """OUT/fields is a full 64 KiB tmpfs: every field fails with the OSError, named once each; a summary closes."""
    from napari_gradcamo.cli import main

    disk = tmp_path / "out" / "fields"
    disk.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this container cannot mount a tmpfs")
    try:
        with pytest.raises(OSError):  # fill it
            with open(disk / "filler", "wb") as f:
                f.write(b"x" * (1 << 20))
        code = main(["plate", "run", str(fields), "--model", str(MODEL), "--out", str(tmp_path / "out"),
                     "--workers", "1"])
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err and "Compute Failed" not in err
    failed = [line for line in err.splitlines() if line.startswith("gradcamo: field ")]
    assert len(failed) == 3 and sum("No space left on device" in line for line in failed) >= 2
    assert err.strip().splitlines()[-1].startswith("gradcamo: 0 of 3 fields done; 3 failed: ")
