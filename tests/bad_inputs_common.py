"""Helpers of the bad-input suite (tests/cli/test_bad_inputs.py, tests/cli/test_bad_outputs.py): run the CLI, snapshot
a folder, write a checkpoint with raw (unvalidated) metadata, synthetic fields on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from napari_gradcamo.cli import main
from napari_gradcamo.models.bundled import bundled_model_path

HONEST = bundled_model_path("honest")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes (what 'nothing changed' compares)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(argv, capsys) -> tuple[int, str]:
    """Run the CLI in-process; argparse's own refusals (SystemExit) count as their exit code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_refused(code, err, *phrases):
    assert code == 2, err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in {err!r}"


def synthetic_fields(tmp_path_factory) -> dict:
    """Synthetic fields (OME-TIFF images + label TIFFs + manifest.csv), 5 stains, 2 classes."""
    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    folder = tmp_path_factory.mktemp("fields")
    manifest = write_synthetic_manifest(folder, "honest", seed=3, n_fields=4, n_cells=5, sites_per_well=1)
    table = pd.read_csv(manifest)
    return {"manifest": manifest, "image": Path(folder / table["image"][0]), "masks": Path(folder / table["masks"][0]),
            "table": table, "folder": folder}


def audit_argv(data, out, *extra, model=HONEST):
    return [str(a) for a in ["audit", data["image"], "--model", model, "--masks", data["masks"], "--out", out, *extra]]


def write_raw_checkpoint(path: Path, metadata) -> Path:
    """A safetensors file with the honest model's weights and ``metadata`` as raw JSON (no validation)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(HONEST)), str(path), metadata={"napari_gradcamo": json.dumps(metadata)})
    return path


def honest_metadata() -> dict:
    from safetensors import safe_open

    with safe_open(str(HONEST), framework="pt") as f:
        return json.loads(f.metadata()["napari_gradcamo"])


class Payload:
    """A pickle payload: unpickling it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def custom_checkpoint(tmp_path: Path, factory: str) -> Path:
    """A ``custom`` checkpoint (2 channels, 2 classes) whose metadata names ``factory``."""
    from analytic_models import channel_mean_classifier
    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata

    meta = ModelMetadata("custom", ["on", "off"], ["a", "b"], [2, 8, 8], architecture_kwargs={"factory": factory})
    return save_checkpoint(tmp_path / "custom.safetensors", channel_mean_classifier(2, 2), meta)


def raising_factory(in_channels, num_classes):
    """A model factory that fails (tests/cli/test_bad_inputs.py: trusted by name, importable from tests/)."""
    raise RuntimeError("factory refuses")


def not_a_module_factory(in_channels, num_classes):
    """A model factory that returns something other than a network."""
    return "a string"
