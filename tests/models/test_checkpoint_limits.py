"""Checkpoint metadata from a file: nesting depth and voxel sizes are bounded before anything is built."""

from __future__ import annotations

import json

import pytest
import torch

from napari_gradcamo.models.bundled import bundled_model_path
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.models.metadata import CheckpointError


@pytest.fixture(scope="module")
def pt_checkpoint(tmp_path_factory):
    """The bundled model as a .pt state dict with a JSON sidecar (the path, and its metadata)."""
    bundle = load_checkpoint(bundled_model_path("honest"))
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(bundle.model.state_dict(), folder / "m.pt")
    return folder / "m.pt", bundle.metadata.model_dump()


def test_deeply_nested_sidecar_json_is_a_checkpoint_error(pt_checkpoint):
    path, _ = pt_checkpoint
    path.with_suffix(".json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="nests its JSON"):  # was RecursionError
        load_checkpoint(path)
    path.with_suffix(".json").write_text('{"a": ' * 200 + "1" + "}" * 200)  # deep, yet under Python's limit
    with pytest.raises(CheckpointError, match="more than 64 levels"):
        load_checkpoint(path)


def test_a_voxel_size_of_1e30_names_the_field(pt_checkpoint):
    path, meta = pt_checkpoint
    path.with_suffix(".json").write_text(json.dumps({**meta, "voxel_size": [1e30, 1.0, 1.0]}))
    with pytest.raises(CheckpointError, match="voxel_size must be three sizes in µm .* between 0.0001 and 10000"):
        load_checkpoint(path)  # was accepted, then "Maximum allowed dimension exceeded" in the audit
    path.with_suffix(".json").write_text(json.dumps({**meta, "voxel_size": [1.0, 0.5, 0.5]}))
    assert load_checkpoint(path).metadata.voxel_size == [1.0, 0.5, 0.5]
