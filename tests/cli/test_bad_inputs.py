"""Bad inputs and attacks: each case is refused with a message naming the problem and the fix, and nothing is
written, changed or run (issue 9). Outputs, interrupts and training: tests/test_bad_outputs.py.
docs/robustness.md lists every case and its outcome."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from bad_inputs_common import (
    HONEST,
    Payload,
    assert_refused,
    audit_argv,
    custom_checkpoint,
    honest_metadata,
    run,
    snapshot,
    synthetic_fields,
    write_raw_checkpoint,
)
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.cli import main
from napari_gradcamo.io.images import ImageError, make_image, read_image
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.models.metadata import CheckpointError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_fields(tmp_path_factory)


# ---------------------------------------------------------------- 1. nothing in a file decides what code runs


def test_numpy_savez_factory_writes_nothing(tmp_path, capsys):
    target = tmp_path / "written_by_checkpoint.npz"
    meta = {**honest_metadata(), "architecture": "custom",
            "architecture_kwargs": {"factory": "numpy:savez", "file": str(target)}}
    ckpt = write_raw_checkpoint(tmp_path / "attack.safetensors", meta)
    code, err = run(["layers", ckpt], capsys)
    assert_refused(code, err, "numpy:savez", "--trust-factory numpy:savez", "Nothing was imported")
    assert not target.exists()


def test_torch_hub_load_never_runs_a_hubconf(data, tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "hubconf_ran.txt"
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    meta = {**honest_metadata(), "architecture": "custom",
            "architecture_kwargs": {"factory": "torch.hub:load", "repo_or_dir": str(repo), "model": "x",
                                    "source": "local"}}
    ckpt = write_raw_checkpoint(tmp_path / "hub.safetensors", meta)
    out = tmp_path / "out"
    code, err = run(audit_argv(data, out, model=ckpt), capsys)
    assert_refused(code, err, "torch.hub:load", "--trust-factory")
    assert not marker.exists()
    assert not list(out.glob("*gradcamo*"))


def test_a_py_file_beside_the_checkpoint_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_beside_ckpt.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef build(**kw):\n    raise SystemExit\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = {**honest_metadata(), "architecture": "custom", "architecture_kwargs": {"factory": "evil_beside_ckpt:build"}}
    ckpt = write_raw_checkpoint(tmp_path / "evil.safetensors", meta)
    for trusted in (None, "evil_beside_ckpt:other", "numpy:savez"):
        with pytest.raises(CheckpointError, match="trusted_factory='evil_beside_ckpt:build'"):
            load_checkpoint(ckpt, trusted_factory=trusted)
    assert not marker.exists() and "evil_beside_ckpt" not in sys.modules


def test_pickled_model_payload_never_runs(data, tmp_path, capsys):
    marker = tmp_path / "unpickled.txt"
    torch.save({"w": Payload(marker)}, tmp_path / "pickled.pt")
    code, err = run(audit_argv(data, tmp_path / "out", model=tmp_path / "pickled.pt"), capsys)
    assert_refused(code, err, "pickled.pt")
    assert not marker.exists()


@pytest.mark.parametrize("kwargs, phrase", [
    ({"width": "x"}, "'width' = 'x' must be a whole number"),
    ({"width": 8, "file": "/tmp/x"}, "'file' is not a keyword of 'small-cnn-3d'"),
    ({"width": 8.5}, "'width' = 8.5 must be a whole number"),
    ({"width": True}, "'width' = True"),
])
def test_file_kwargs_reach_builtins_only_when_documented_and_typed(tmp_path, capsys, kwargs, phrase):
    ckpt = write_raw_checkpoint(tmp_path / "k.safetensors", {**honest_metadata(), "architecture_kwargs": kwargs})
    code, err = run(["layers", ckpt], capsys)
    assert_refused(code, err, phrase)


@pytest.mark.parametrize("factory, phrase", [
    ("bad_inputs_common:raising_factory", "failed (RuntimeError: factory refuses"),
    ("bad_inputs_common:not_a_module_factory", "not a torch.nn.Module"),
    ("analytic_models:no_such_function", "Cannot import model factory"),
])
def test_a_trusted_factory_that_fails_is_a_checkpoint_error(tmp_path, factory, phrase):
    ckpt = custom_checkpoint(tmp_path, factory)
    with pytest.raises(CheckpointError, match=phrase.replace("(", r"\(")):
        load_checkpoint(ckpt, trusted_factory=factory)


def test_trusted_factory_from_the_command_line(data, tmp_path, capsys):
    ckpt = custom_checkpoint(tmp_path, "analytic_models:channel_mean_classifier")
    code, err = run(["layers", ckpt], capsys)
    assert_refused(code, err, "--trust-factory analytic_models:channel_mean_classifier")
    code = main(["layers", str(ckpt), "--trust-factory", "analytic_models:channel_mean_classifier"])
    assert code == 0 and "ChannelMean" not in capsys.readouterr().err


def test_installed_package_registers_an_architecture(tmp_path, monkeypatch):
    """The documented route for a lab's own model class: an entry point in group napari_gradcamo.architectures."""
    package = tmp_path / "site"
    (package / "lab_models_demo-0.1.dist-info").mkdir(parents=True)
    (package / "lab_models_demo-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-models-demo\nVersion: 0.1\n")
    (package / "lab_models_demo-0.1.dist-info" / "entry_points.txt").write_text(
        "[napari_gradcamo.architectures]\nlab-mean = lab_models_demo:build\n")
    (package / "lab_models_demo.py").write_text(
        "from analytic_models import channel_mean_classifier\n"
        "def build(in_channels, num_classes):\n    return channel_mean_classifier(in_channels, num_classes)\n")
    monkeypatch.syspath_prepend(str(package))
    from analytic_models import channel_mean_classifier
    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata

    ckpt = save_checkpoint(tmp_path / "lab.safetensors", channel_mean_classifier(2, 2),
                           ModelMetadata("lab-mean", ["on", "off"], ["a", "b"], [2, 8, 8]))
    assert type(load_checkpoint(ckpt).model).__name__ == "ChannelMeanClassifier"


# ------------------------------------------------------------------------- 2. metadata against the schema


def _meta(**changes):
    meta = honest_metadata()
    for key, value in changes.items():
        if value is KeyError:
            meta.pop(key)
        else:
            meta[key] = value
    return meta


BAD_METADATA = {
    "crop_shape as text": (_meta(crop_shape="8,32,32"), "crop_shape"),
    "crop_shape as float": (_meta(crop_shape=[8, 32, 32.0]), "crop_shape.2"),
    "crop_shape null": (_meta(crop_shape=None), "crop_shape"),
    "crop_shape 10000³": (_meta(crop_shape=[10000, 10000, 10000]), "1..1024"),
    "crop_shape too many voxels": (_meta(crop_shape=[1024, 1024, 32]), "voxels"),
    "crop_shape zero": (_meta(crop_shape=[0, 32, 32]), "crop_shape"),
    "crop_shape two sizes": (_meta(crop_shape=[32, 32]), "three sizes"),
    "metadata a bare number": (5, "not a JSON object"),
    "metadata a list": ([1, 2], "not a JSON object"),
    "integer class names": (_meta(class_names=[0, 1]), "class_names.0"),
    "duplicate class names": (_meta(class_names=["control", "control"]), "'control' appears twice"),
    "blank class name": (_meta(class_names=["control", "  "]), "must not be empty"),
    "one class": (_meta(class_names=["control"]), "class_names"),
    "duplicate channel names": (_meta(channel_names=["DNA", "DNA", "RNA", "AGP", "Mito"]), "'DNA' appears twice"),
    "channel names differing in case only": (_meta(channel_names=["DNA", "dna", "RNA", "AGP", "Mito"]), "appears twice"),
    "string width": (_meta(architecture_kwargs={"width": "8"}), "'width'"),
    "unknown kwarg": (_meta(architecture_kwargs={"width": 8, "depth": 3}), "'depth' is not a keyword"),
    "kwargs as a list": (_meta(architecture_kwargs=[8]), "architecture_kwargs"),
    "normalization as text": (_meta(normalization="fixed"), "normalization"),
    "unknown normalization": (_meta(normalization={"method": "magic"}), "unknown method 'magic'"),
    "NaN normalization": (_meta(normalization={"method": "fixed", "mean": [0] * 5, "std": [float("nan")] * 5}), "finite"),
    "normalization for 2 of 5 channels": (_meta(normalization={"method": "fixed", "mean": [0, 0], "std": [1, 1]}), "5 numbers"),
    "bad percentiles": (_meta(normalization={"method": "percentile", "low": 99, "high": 1}), "low < high"),
    "unknown field": (_meta(crop_shap=[8, 32, 32]), "crop_shap: unknown field"),
    "missing field": (_meta(crop_shape=KeyError), "lacks crop_shape"),
    "future format": (_meta(format_version=99), "format_version"),
    "unknown architecture": (_meta(architecture="resnet-9000"), "Unknown architecture 'resnet-9000'"),
    "target layer a number": (_meta(target_layer=3), "target_layer"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_is_refused_before_anything_is_written(data, tmp_path, capsys, case):
    meta, phrase = BAD_METADATA[case]
    ckpt = write_raw_checkpoint(tmp_path / "bad.safetensors", meta)
    out = tmp_path / "out"
    code, err = run(audit_argv(data, out, model=ckpt), capsys)
    assert_refused(code, err, phrase)
    assert snapshot(out) == {}


def test_bad_sidecar_json_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "m.pt")


# -------------------------------------------------------------------------------- images, labels, options


def _write_npy(path, array):
    np.save(path, array)
    return path


BAD_IMAGE_FILES = {
    "a folder as the image": (lambda d: d, "is a folder"),
    "an empty .npy": (lambda d: (d / "empty.npy").write_bytes(b"") or d / "empty.npy", "not a readable .npy"),
    "a truncated TIFF": (lambda d: d / "cut.tif", "truncated"),
    "a missing file": (lambda d: d / "nope.tif", "does not exist"),
    "float64 beyond float32": (lambda d: _write_npy(d / "huge.npy", np.full((5, 12, 64, 64), 1e300) * np.linspace(0.5, 1, 64)),
                               "beyond float32's range"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGE_FILES))
def test_bad_image_files(data, tmp_path, capsys, case):
    make, phrase = BAD_IMAGE_FILES[case]
    (tmp_path / "in").mkdir()
    whole = data["image"].read_bytes()
    (tmp_path / "in" / "cut.tif").write_bytes(whole[: len(whole) // 3])
    image = make(tmp_path / "in")
    out = tmp_path / "out"
    code, err = run(["audit", image, "--model", HONEST, "--masks", data["masks"], "--out", out,
                     "--axes", "CZYX"] if str(image).endswith(".npy") else
                    ["audit", image, "--model", HONEST, "--masks", data["masks"], "--out", out], capsys)
    assert_refused(code, err, phrase)
    assert not list(out.glob("*gradcamo*"))


def _labels_like(data, kind):
    labels = tifffile.imread(data["masks"]).astype(np.int64)
    if kind == "bool":
        return labels > 0
    if kind == "negative":
        return np.where(labels == 1, -1, labels)
    if kind == "uint64 beyond int64":
        return np.where(labels == 1, np.uint64(2**64 - 1), labels.astype(np.uint64))
    if kind == "float with fractions":
        return labels + 0.5
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, phrase", [
    ("bool", "yes/no mask (bool)"),
    ("negative", "negative ids"),
    ("uint64 beyond int64", "exceeds"),
    ("float with fractions", "non-whole"),
])
def test_bad_labels_are_refused_by_cli_and_api_alike(data, tmp_path, capsys, kind, phrase):
    labels = _labels_like(data, kind)
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "out"
    code, err = run(["audit", data["image"], "--model", HONEST, "--masks", tmp_path / "labels.npy", "--out", out], capsys)
    assert_refused(code, err, phrase)
    assert not list(out.glob("*gradcamo*"))
    with pytest.raises(ImageError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        run_audit(read_image(data["image"]), labels, load_checkpoint(HONEST))


@pytest.mark.parametrize("big_id", [2**31 - 1, 2**40, 2**62])
def test_huge_label_ids_keep_their_id_and_cost_no_memory(data, big_id):
    import tracemalloc

    from napari_gradcamo.crops.extract import cell_table

    labels = tifffile.imread(data["masks"]).astype(np.uint64)
    first = int(labels.max())
    labels[labels == first] = big_id
    tracemalloc.start()
    cells = cell_table(labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 * labels.nbytes  # one entry per id up to 2**31 alone would be 17 GB
    assert [c.label for c in cells][-1] == big_id
    table = run_audit(read_image(data["image"]), labels, load_checkpoint(HONEST)).table
    assert big_id in set(table["label"].astype(np.uint64).tolist())
    assert len(table) == len(np.unique(labels)) - 1


def test_label_in_two_pieces_is_reported(data, tmp_path, capsys):
    labels = tifffile.imread(data["masks"]).astype(np.int32)
    ids = [i for i in np.unique(labels) if i]
    labels[labels == ids[1]] = ids[0]  # two separate cells now share one id
    tifffile.imwrite(tmp_path / "split.tif", labels)
    assert main(["audit", str(data["image"]), "--model", str(HONEST), "--masks", str(tmp_path / "split.tif"),
                 "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    table = pd.read_csv(json.loads(out)["table"]).set_index("label")
    assert table.loc[ids[0], "pieces"] == 2 and (table.drop(index=ids[0])["pieces"] == 1).all()
    assert "1 label(s) consist of several separate pieces" in err


BAD_OPTIONS = {
    "--threshold nan": (["--threshold", "nan"], "must be a finite number"),
    "--threshold 2": (["--threshold", "2"], "outside the range of normalised"),
    "--flag-on gradcamo --threshold 1.5": (["--flag-on", "gradcamo", "--threshold", "1.5"], "outside the range of gradcamo"),
    "--flag-on lift --threshold -1": (["--flag-on", "lift", "--threshold", "-1"], "outside the range of lift"),
    "--flag-on bogus": (["--flag-on", "bogus"], "invalid choice"),
    "--batch-size 0": (["--batch-size", "0"], "must be at least 1"),
    "--batch-size -1": (["--batch-size", "-1"], "must be at least 1"),
    "--batch-size x": (["--batch-size", "x"], "not a whole number"),
    "--device tpu9": (["--device", "tpu9"], "not a device"),
    "--device mps": (["--device", "mps"], "no such device"),
    "--channel-map a,b": (["--channel-map", "a,b"], "whole numbers separated by commas"),
    "--target-class unknown": (["--target-class", "mutant"], "Unknown target class 'mutant'"),
    "--batch-size beyond memory": (["--batch-size", "100000000"], "Lower --batch-size"),
}
if not torch.cuda.is_available():
    BAD_OPTIONS["--device cuda"] = (["--device", "cuda"], "no such device")


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_out_of_range_options_are_refused_never_coerced(data, tmp_path, capsys, case):
    extra, phrase = BAD_OPTIONS[case]
    out = tmp_path / "out"
    code, err = run(audit_argv(data, out, *extra), capsys)
    assert_refused(code, err, phrase)
    assert not list(out.glob("*gradcamo*"))


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("batch_size", -1), ("threshold", float("nan"))])
def test_api_settings_are_refused_never_coerced(data, field, value):
    with pytest.raises(ValueError, match=field):
        run_audit(read_image(data["image"]), tifffile.imread(data["masks"]), load_checkpoint(HONEST),
                  AuditSettings(**{field: value}))


def test_non_finite_model_outputs_give_nan_and_a_reason(data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    state = load_file(str(HONEST))
    state["head.bias"] = torch.full_like(state["head.bias"], float("nan"))
    save_file(state, str(tmp_path / "nan.safetensors"), metadata={"napari_gradcamo": json.dumps(honest_metadata())})
    assert main(audit_argv(data, tmp_path / "out", model=tmp_path / "nan.safetensors")) == 0
    table = pd.read_parquet(json.loads(capsys.readouterr().out)["parquet"])
    assert len(table) > 0
    assert (table["predicted_class"] == "").all() and table["probability"].isna().all()
    assert table[[c for c in table if c.startswith("prob_")]].isna().all().all()
    assert table["gradcamo"].isna().all() and table["reason"].str.contains("not finite").all()
    assert table[["lift", "normalised"]].isna().all().all()
    assert table["flagged"].all()


def test_run_record_of_in_memory_data_says_so():
    from napari_gradcamo.output.provenance import start_record

    record = start_record("audit", "honest (trained)", {}, {"image": "", "layer": "nuclei"}, {})
    assert record["checkpoint"]["note"].startswith("not a file") and "sha256" not in record["checkpoint"]
    assert record["inputs"] == {"image": None, "layer": {"path": "nuclei", "note": record["checkpoint"]["note"]}}


def test_float32_overflow_is_refused_by_the_api(data):
    with pytest.raises(ImageError, match="beyond float32"):
        make_image(np.full((2, 4, 8, 8), 1e40), "CZYX")
