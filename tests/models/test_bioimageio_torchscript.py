"""bioimage.io packages with TorchScript weights (issue 26): an exported package carries TorchScript beside the
state dict, and bioimage.io's own runner reproduces the test output from the TorchScript weights alone, without
napari-gradcamo importable; a TorchScript-only package of ours is audited (the network rebuilt from its metadata
and given the TorchScript parameters), a third-party one is refused with the reason."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from napari_gradcamo.cli import main
from napari_gradcamo.models.bioimageio import TORCHSCRIPT_FILE
from napari_gradcamo.models.bundled import bundled_model_path, load_demo_model
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.synthetic.experiment import scenario_fields

pytest.importorskip("bioimageio.core", reason="the [bioimageio] extra is not installed")

#: bioimage.io's runner in a process where napari_gradcamo cannot be imported: only TorchScript can serve it.
RUNNER = """
import json, sys
sys.modules["napari_gradcamo"] = None
from bioimageio.core import test_model
summary = test_model(sys.argv[1], weight_format="torchscript")
print(json.dumps({"status": summary.status, "details": [d.name + ': ' + d.status for d in summary.details]}))
"""


def _torchscript_only(package, folder, *, ours=True):
    """``package`` rewritten with its TorchScript weights alone (and, for ``ours=False``, without our config)."""
    from bioimageio.spec import load_description, save_bioimageio_package

    folder.mkdir(parents=True)
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["weights"] = {"torchscript": {k: v for k, v in rdf["weights"]["torchscript"].items() if k != "parent"}}
    (folder / "weights.pt").unlink()
    if not ours:
        rdf.pop("config")
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    out = folder.with_suffix(".zip")
    save_bioimageio_package(load_description(folder / "rdf.yaml"), output_path=out)
    return out


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ts")
    exported = folder / "honest.zip"
    assert main(["export-bioimageio", str(bundled_model_path("honest")), "--out", str(exported)]) == 0
    return exported, _torchscript_only(exported, folder / "ts_only"), _torchscript_only(exported, folder / "lab",
                                                                                       ours=False)


@pytest.mark.slow
def test_the_export_carries_torchscript_that_bioimageios_runner_runs_without_napari_gradcamo(packages):
    exported, ts_only, _ = packages
    with zipfile.ZipFile(exported) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert {"weights.pt", TORCHSCRIPT_FILE} <= names
    assert rdf["weights"]["torchscript"]["parent"] == "pytorch_state_dict"
    for package in (exported, ts_only):
        done = subprocess.run([sys.executable, "-c", RUNNER, str(package)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["status"] == "passed", result  # reproduces the exported test output from TorchScript
    with zipfile.ZipFile(ts_only) as archive:
        assert "weights.pt" not in archive.namelist()


def test_a_torchscript_only_package_of_ours_audits_as_its_checkpoint(packages, tmp_path, capsys):
    _, ts_only, _ = packages
    original, back = load_demo_model("honest"), load_checkpoint(ts_only)
    assert back.metadata.model_dump() == original.metadata.model_dump()  # its target layer among them
    a, b = original.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not isinstance(back.model, torch.jit.ScriptModule)  # Python modules: Grad-CAM can hook them

    f = scenario_fields("honest", seed=5, n_fields=1)[0]
    np.save(tmp_path / "field.npy", f.image.data.transpose(1, 0, 2, 3))
    import tifffile

    tifffile.imwrite(tmp_path / "masks.tif", f.labels)
    tables = []
    for name, model in (("ckpt", bundled_model_path("honest")), ("ts", ts_only)):
        assert main(["audit", str(tmp_path / "field.npy"), "--axes", "ZCYX", "--channel-names",
                     ",".join(f.image.channel_names), "--model", str(model), "--masks", str(tmp_path / "masks.tif"),
                     "--out", str(tmp_path / name)]) == 0
        tables.append(pd.read_csv(json.loads(capsys.readouterr().out)["table"]))
    assert len(tables[0]) == len(tables[1]) > 0
    np.testing.assert_allclose(tables[1]["gradcamo"], tables[0]["gradcamo"], rtol=1e-5, atol=1e-7)


def test_a_third_party_torchscript_only_package_is_refused_with_the_reason(packages, capsys):
    _, _, lab = packages
    assert main(["layers", str(lab)]) == 2
    err = capsys.readouterr().err
    assert "TorchScript weights only" in err and "refuses Python hooks" in err and "Traceback" not in err
