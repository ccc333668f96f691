"""bioimage.io model packages: export a checkpoint (validated by bioimageio.core), audit a package with one
command, a third-party package's code only with the user's trust, bad packages refused with exit code 2.
Everything is built locally with bioimageio.spec: no network."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml

from napari_gradcamo.cli import main
from napari_gradcamo.models.bundled import bundled_model_path, load_demo_model
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.synthetic.experiment import scenario_fields

pytest.importorskip("bioimageio.core", reason="the [bioimageio] extra is not installed")
LABMODEL = pytest.mark.skipif(importlib.util.find_spec("labmodel") is None,
                              reason="tests/labmodel_pkg is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    folder = tmp_path_factory.mktemp("field")
    f = scenario_fields("honest", seed=5, n_fields=1)[0]
    np.save(folder / "field.npy", f.image.data.transpose(1, 0, 2, 3))
    tifffile.imwrite(folder / "masks.tif", f.labels)
    return folder, ",".join(f.image.channel_names)


def audit(field, model, out, *extra):
    folder, channels = field
    code = main(["audit", str(folder / "field.npy"), "--axes", "ZCYX", "--channel-names", channels, "--model",
                 str(model), "--masks", str(folder / "masks.tif"), "--out", str(out), *extra])
    return code


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "honest.zip"
    assert main(["export-bioimageio", str(bundled_model_path("honest")), "--out", str(out), "--check"]) == 0
    return out


def test_export_passes_bioimageio_core_and_imports_back_exactly(exported, capsys):
    from bioimageio.core import test_model

    assert test_model(exported).status == "passed"  # bioimage.io's own check, offline
    original, back = load_demo_model("honest"), load_checkpoint(exported)
    assert back.metadata.model_dump() == original.metadata.model_dump()
    a, b = original.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export-bioimageio", str(bundled_model_path("honest")), "--out", str(exported)]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_package_audits_with_one_command_and_scores_as_its_checkpoint(exported, field, tmp_path, capsys):
    assert audit(field, bundled_model_path("honest"), tmp_path / "ckpt") == 0
    direct = pd.read_csv(json.loads(capsys.readouterr().out)["table"])
    assert audit(field, exported, tmp_path / "pkg") == 0
    packaged = pd.read_csv(json.loads(capsys.readouterr().out)["table"])
    assert len(packaged) == len(direct) > 0
    np.testing.assert_allclose(packaged["gradcamo"], direct["gradcamo"], rtol=1e-5, atol=1e-7)
    assert (packaged["predicted_class"] == direct["predicted_class"]).all()
    assert packaged["gradcamo"].median() > packaged["chance"].median()  # the honest model looks at its cells


def _third_party_package(folder, *, architecture=None, channel_axis=True, weights=True):
    """A package as a lab would publish it: its own network (labmodel.nets:build_3d), plain RDF fields."""
    from labmodel.nets import build_3d

    torch.manual_seed(0)
    net = build_3d().eval()
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(0, 1, (1, 5, 8, 32, 32)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.as_tensor(x)).numpy()
    np.save(folder / "in.npy", x)
    np.save(folder / "out.npy", y)
    if weights:
        torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "README.md").write_text("# Lab classifier\n\n# Validation\n\nnone\n")
    channels = ["DNA", "ER", "RNA", "AGP", "Mito"]
    axes = [{"type": "batch"}] + ([{"type": "channel", "channel_names": channels}] if channel_axis else []) + [
        {"type": "space", "id": a, "size": s} for a, s in zip("zyx", (8, 32, 32))]
    rdf = {"type": "model", "format_version": "0.5.4", "name": "lab classifier", "description": "a lab's model",
           "authors": [{"name": "A Lab"}], "cite": [{"text": "lab", "doi": "10.1101/2024.05.21.595211"}],
           "license": "MIT", "documentation": "README.md",
           "inputs": [{"id": "raw", "axes": axes, "test_tensor": {"source": "in.npy"}}],
           "outputs": [{"id": "classes", "axes": [{"type": "batch"}, {"type": "channel",
                                                                     "channel_names": ["control", "treated"]}],
                        "test_tensor": {"source": "out.npy"}}],
           "weights": {"pytorch_state_dict": {"source": "weights.pt", "pytorch_version": "2.0",
                                              "architecture": architecture or {"callable": "build_3d",
                                                                               "import_from": "labmodel.nets"}}}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder / "rdf.yaml"


@LABMODEL
def test_a_third_party_package_runs_its_code_only_when_trusted(field, tmp_path, capsys):
    rdf = _third_party_package(tmp_path / "lab")
    assert audit(field, rdf, tmp_path / "refused") == 2
    err = capsys.readouterr().err
    assert "labmodel.nets:build_3d" in err and "--trust-factory" in err and "Traceback" not in err
    assert audit(field, rdf, tmp_path / "ok", "--trust-factory", "labmodel.nets:build_3d") == 0
    table = pd.read_csv(json.loads(capsys.readouterr().out)["table"])
    assert len(table) > 0 and np.isfinite(table["probability"]).all()
    assert main(["layers", str(rdf), "--trust-factory", "labmodel.nets:build_3d"]) == 0
    assert "encoder.stages" in capsys.readouterr().out


@LABMODEL
@pytest.mark.parametrize("broken, words", [
    ({"architecture": {"callable": "build", "source": "net.py"}}, "Python source inside the package"),
    ({"channel_axis": False}, "not a valid bioimage.io model"),  # bioimageio.spec finds it (test tensor vs axes)
    ({"weights": False}, "weights"),
])
def test_broken_packages_are_refused_with_exit_code_2(field, tmp_path, capsys, broken, words):
    if "architecture" in broken:
        (tmp_path / "lab").mkdir()
        (tmp_path / "lab" / "net.py").write_text("raise SystemExit('this file must never run')\n")
    rdf = _third_party_package(tmp_path / "lab", **broken)
    assert audit(field, rdf, tmp_path / "out", "--trust-factory", "labmodel.nets:build_3d") == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
