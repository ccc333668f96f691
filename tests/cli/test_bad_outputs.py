"""Outputs, interrupts and training under faults and mistakes: nothing lost, nothing replaced silently, every
mistake refused before the compute (issue 9). Inputs and attacks: tests/test_bad_inputs.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from bad_inputs_common import HONEST, Payload, assert_refused, audit_argv, run, snapshot, synthetic_fields
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.cli import main
from napari_gradcamo.io.atomic import TEMP_PREFIX
from napari_gradcamo.io.images import read_image
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.output import results
from napari_gradcamo.output.provenance import describe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_fields(tmp_path_factory)


# --------------------------------------------------------------------------- 3. outputs: atomic, never lost


def test_out_that_is_a_file_fails_before_compute(data, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    code, err = run(audit_argv(data, tmp_path / "out"), capsys)
    assert_refused(code, err, "is a file, not a folder")
    assert (tmp_path / "out").read_text() == "a file"


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only mount needs root (chmod does not stop root)")
def test_read_only_out_fails_before_compute(data, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)]).returncode != 0:
        pytest.skip("this container cannot mount a tmpfs")
    try:
        code, err = run(audit_argv(data, ro / "out"), capsys)
        assert_refused(code, err, "not writable")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_second_audit_into_the_same_out_is_refused_then_overwrite_replaces(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(audit_argv(data, out)) == 0
    capsys.readouterr()
    first = snapshot(out)
    code, err = run(audit_argv(data, out, "--threshold", "0.9"), capsys)
    assert_refused(code, err, "Results already exist", "--overwrite")
    assert snapshot(out) == first
    assert main(audit_argv(data, out, "--threshold", "0.9", "--overwrite")) == 0
    record = results.read_run_record(json.loads(capsys.readouterr().out)["parquet"])
    assert record["settings"]["audit"]["threshold"] == 0.9


def test_same_file_name_in_two_folders_gets_two_tables(data, tmp_path, capsys):
    for sub in ("p1", "p2"):
        (tmp_path / sub).mkdir()
        shutil.copy(data["image"], tmp_path / sub / "field.ome.tif")
    tables = []
    for sub in ("p1", "p2"):
        assert main(["audit", str(tmp_path / sub / "field.ome.tif"), "--model", str(HONEST), "--masks",
                     str(data["masks"]), "--out", str(tmp_path / "out")]) == 0
        tables.append(json.loads(capsys.readouterr().out)["table"])
    assert tables[0] != tables[1] and all(Path(t).exists() for t in tables)


def test_cellpose_masks_already_in_out_are_not_overwritten(data, tmp_path, capsys):
    """Refused before cellpose runs: the masks a previous run wrote stay as they are."""
    from napari_gradcamo.cli._common import output_stem

    out = tmp_path / "out"
    out.mkdir()
    masks = out / f"{output_stem(data['image'])}_masks.tif"
    shutil.copy(data["masks"], masks)
    (out / "masks.tif").write_bytes(b"the user's own file")
    before = snapshot(out)
    code, err = run(["audit", data["image"], "--model", HONEST, "--out", out], capsys)
    assert_refused(code, err, "Results already exist", masks.name, "--overwrite")
    assert snapshot(out) == before


def test_run_record_names_checkpoint_image_settings_and_versions(data, tmp_path, capsys):
    assert main(audit_argv(data, tmp_path / "out", "--batch-size", "3")) == 0
    summary = json.loads(capsys.readouterr().out)
    record = json.loads(Path(summary["run_record"]).read_text())
    assert record == results.read_run_record(summary["parquet"]) == results.read_run_record(summary["table"])
    assert record["checkpoint"]["sha256"] == hashlib.sha256(HONEST.read_bytes()).hexdigest()
    assert record["checkpoint"]["path"] == str(HONEST.resolve())
    assert record["checkpoint"]["metadata"]["class_names"] == ["control", "treated"]
    assert record["inputs"]["image"]["size"] == data["image"].stat().st_size
    assert record["inputs"]["image"]["path"] == str(data["image"].resolve())
    assert record["settings"]["audit"]["batch_size"] == 3
    assert record["versions"]["torch"] == torch.__version__.split("+")[0] or record["versions"]["torch"] == torch.__version__
    assert record["completed"] is True and record["started"] <= record["ended"]
    assert record["cells_done"] == record["cells_total"] == summary["cells"]
    assert describe(record).startswith(f"made by honest.safetensors (SHA-256 {record['checkpoint']['sha256'][:12]}")
    assert describe(record).endswith("complete")


def test_export_carries_the_run_record_and_refuses_to_replace_it(data, tmp_path):
    from napari_gradcamo.output.export import ExportExistsError, export_flagged
    from napari_gradcamo.output.provenance import finish_record, start_record

    image, labels, bundle = read_image(data["image"]), tifffile.imread(data["masks"]), load_checkpoint(HONEST)
    result = run_audit(image, labels, bundle, AuditSettings(threshold=1.0))
    record = finish_record(start_record("audit", HONEST, bundle.metadata.model_dump(), {"image": data["image"]}, {}),
                           True, cells_done=len(result.table), cells_total=len(result.table))
    export = export_flagged(tmp_path / "export", image, labels, result.table, result.cams, run_record=record)
    assert results.read_run_record(export.table_parquet) == json.loads(json.dumps(record)) == \
        results.read_run_record(export.table_csv)
    before = snapshot(tmp_path / "export")
    with pytest.raises(ExportExistsError, match="nothing was written"):
        export_flagged(tmp_path / "export", image, labels, result.table, result.cams, run_record=record, gallery=False)
    assert snapshot(tmp_path / "export") == before


def test_failed_parquet_write_leaves_the_previous_pair_untouched(tmp_path):
    good = pd.DataFrame({"label": [1, 2], "gradcamo": [0.5, 0.7]})
    results.write_table(good, tmp_path, "t", {"completed": True})
    before = snapshot(tmp_path)
    bad = pd.DataFrame({"label": [1, 2, 3], "gradcamo": [0.1, "text", object()]})  # pyarrow cannot store this
    with pytest.raises(ValueError, match="cannot be stored as Parquet .*column gradcamo"):  # typed (issue 23)
        results.write_table(bad, tmp_path, "t", {"completed": True})
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill the disk needs root")
def test_disk_full_leaves_the_previous_pair_untouched(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this container cannot mount a tmpfs")
    try:
        results.write_table(pd.DataFrame({"label": [1, 2], "gradcamo": [0.5, 0.7]}), disk, "t", {"completed": True})
        before = snapshot(disk)
        big = pd.DataFrame({"label": np.arange(200_000), "gradcamo": np.random.default_rng(0).random(200_000)})
        with pytest.raises(OSError):
            results.write_table(big, disk, "t", {"completed": True})
        assert snapshot(disk) == before
        assert not list(disk.glob(TEMP_PREFIX + "*"))
        assert pd.read_csv(disk / "t.csv")["label"].tolist() == [1, 2]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------------------- 5. interrupts and --resume


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_finished_rows_marked_incomplete_and_resume_finishes(data, tmp_path, capsys, monkeypatch, signum):
    import napari_gradcamo.cli.audit as audit_cli

    real_bar = audit_cli.progress_bar

    def bar_that_signals(description, unit="step"):
        bar, update = real_bar(description, unit)

        def update_and_signal(done, total, message=""):
            update(done, total, message)
            if done == 2:  # after the second finished batch: the user presses Ctrl-C (or kill sends SIGTERM)
                os.kill(os.getpid(), signum)

        return bar, update_and_signal

    out = tmp_path / "out"
    monkeypatch.setattr(audit_cli, "progress_bar", bar_that_signals)
    code, err = run(audit_argv(data, out, "--batch-size", "1"), capsys)
    assert code == 130 and "--resume" in err
    parquet = next(out.glob("*_gradcamo.parquet"))
    partial = pd.read_parquet(parquet)
    record = results.read_run_record(parquet)
    assert record["completed"] is False and record["cells_done"] == len(partial) == 2 < record["cells_total"]
    assert f"INCOMPLETE: 2 of {record['cells_total']} cells" in describe(record)
    monkeypatch.setattr(audit_cli, "progress_bar", real_bar)
    code, err = run(audit_argv(data, out, "--batch-size", "1"), capsys)
    assert_refused(code, err, "Results already exist")  # a plain re-run does not wipe the finished rows
    assert main(audit_argv(data, out, "--batch-size", "1", "--resume")) == 0
    full = pd.read_parquet(parquet)
    assert results.read_run_record(parquet)["completed"] is True
    assert len(full) == record["cells_total"] and full["label"].is_unique
    pd.testing.assert_frame_equal(full[full["label"].isin(partial["label"])].reset_index(drop=True), partial)


def test_resume_refuses_a_different_run(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(audit_argv(data, out, "--resume"), capsys)
    assert_refused(code, err, "Nothing to resume")
    assert main(audit_argv(data, out)) == 0
    capsys.readouterr()
    code, err = run(audit_argv(data, out, "--resume"), capsys)
    assert_refused(code, err, "completed")


# ------------------------------------------------------------------------------------------- 6. training


def _manifest_with(data, tmp_path, change):
    table = data["table"].copy()
    table["image"] = [str(data["folder"] / p) for p in table["image"]]
    table["masks"] = [str(data["folder"] / p) for p in table["masks"]]
    change(table)
    table.to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def _same_image_twice(table):
    table.loc[1, "image"] = table.loc[0, "image"]


BAD_TRAINING = {
    "an image in two wells": (_same_image_twice, [], "list the same image"),
    "unknown --layer": (None, ["--layer", "nope"], "--layer 'nope' is not a layer"),
    "--classes subset": (None, ["--classes", "control"], "leaves out treated"),
    "--classes unknown name": (None, ["--classes", "control,treated,mutant"], "mutant, which no manifest row has"),
    "--classes repeated": (None, ["--classes", "control,control,treated"], "repeats control"),
    "--arch-kwargs bad width": (None, ["--arch-kwargs", '{"width": "x"}'], "'width' = 'x'"),
    "--arch-kwargs a list": (None, ["--arch-kwargs", "[1]"], "must be a JSON object"),
    "--arch-kwargs not JSON": (None, ["--arch-kwargs", "{width: 8}"], "not valid JSON"),
    "unknown --arch": (None, ["--arch", "resnet-9000"], "Unknown architecture"),
    "--batch-size 0": (None, ["--batch-size", "0"], "must be at least 1"),
    "--crop-shape 10000³": (None, ["--crop-shape", "10000", "10000", "10000"], "1..1024"),
    "--val-fraction 1.5": (None, ["--val-fraction", "1.5"], "--val-fraction"),
    "--device cuda:7": (None, ["--device", "cuda:7"], "no such device"),
}


@pytest.mark.parametrize("case", list(BAD_TRAINING))
def test_train_refuses_before_building_its_cache(data, tmp_path, capsys, case):
    change, extra, phrase = BAD_TRAINING[case]
    manifest = _manifest_with(data, tmp_path, change) if change else data["manifest"]
    out = tmp_path / "run"
    code, err = run(["train", manifest, "--out", out, "--epochs", "1", "--device", "cpu", *extra], capsys)
    assert_refused(code, err, phrase)
    assert snapshot(out) == {}  # no crops cache, no checkpoint


def test_train_into_a_finished_run_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(HONEST.read_bytes())
    code, err = run(["train", data["manifest"], "--out", out, "--epochs", "1"], capsys)
    assert_refused(code, err, "Results already exist", "model.safetensors", "--overwrite")
    assert snapshot(out) == {"model.safetensors": hashlib.sha256(HONEST.read_bytes()).hexdigest()}


@pytest.mark.parametrize("kind", ["corrupt", "pickled", "foreign"])
def test_bad_resume_state_gives_a_message(data, tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "resume_payload_ran"
    if kind == "corrupt":
        (out / "resume.pt").write_bytes(os.urandom(300))
    elif kind == "pickled":
        torch.save({"model": Payload(marker)}, out / "resume.pt")
    else:
        torch.save({"weights": torch.zeros(3)}, out / "resume.pt")
    code, err = run(["train", data["manifest"], "--out", out, "--epochs", "1", "--width", "2", "--batch-size", "4",
                     "--device", "cpu", "--resume"], capsys)
    assert_refused(code, err, "resume.pt", "without --resume")
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["resume.pt"]  # refused before the crop cache
