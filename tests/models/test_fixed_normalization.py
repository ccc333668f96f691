"""A fixed normalisation with std 0 is refused, never clamped to 1e-6 (issue 23: every cell became 'treated',
exit 0): in the checkpoint's metadata, where crops are normalised, and where training fits it."""

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_gradcamo.models.checkpoint import normalize_crops
from napari_gradcamo.models.metadata import CheckpointError, ModelMetadata
from napari_gradcamo.train.data import fit_normalization, fit_normalization_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bad_inputs_common import (  # noqa: E402
    assert_refused,
    audit_argv,
    honest_metadata,
    run,
    snapshot,
    synthetic_fields,
    write_raw_checkpoint,
)


def test_a_checkpoint_with_std_zero_is_refused_by_the_audit(tmp_path_factory, tmp_path, capsys):
    data = synthetic_fields(tmp_path_factory)
    meta = honest_metadata()
    meta["normalization"] = {**meta["normalization"], "std": [0.0, *meta["normalization"]["std"][1:]]}
    ckpt = write_raw_checkpoint(tmp_path / "std0.safetensors", meta)
    out = tmp_path / "out"
    code, err = run(audit_argv(data, out, model=ckpt), capsys)
    assert_refused(code, err, "std must be positive for every channel", "DNA (0)", "Retrain without that channel")
    assert snapshot(out) == {}


def test_metadata_and_normalize_crops_refuse_std_zero():
    with pytest.raises(ValueError, match=r"ER \(0\) is not"):
        ModelMetadata("small-cnn-3d", ["a", "b"], ["DNA", "ER"], [4, 16, 16],
                      normalization={"method": "fixed", "mean": [0, 0], "std": [1.0, 0.0]})
    crops = np.ones((1, 2, 2, 2, 2), np.float32)
    with pytest.raises(CheckpointError, match="every std must be positive"):
        normalize_crops(crops, {"method": "fixed", "mean": [0, 0], "std": [1.0, 0.0]})
    tiny = normalize_crops(crops, {"method": "fixed", "mean": [0, 0], "std": [1.0, 1e-7]})
    assert np.allclose(tiny[:, 1], 1e7)  # a small positive std is used as it is, not replaced


def test_training_on_a_constant_channel_is_refused_before_it_starts():
    rng = np.random.default_rng(0)
    x = rng.random((6, 3, 2, 4, 4)).astype(np.float32)
    x[:, 1] = 250.0
    with pytest.raises(ValueError, match=r"Channel\(s\) \[1\] are constant in the training crops"):
        fit_normalization(x)
    with pytest.raises(ValueError, match=r"Channel\(s\) \[1\] are constant"):
        fit_normalization_rows(x, range(6), chunk=4)
    x[:, 1, 0, 0, 0] = 251.0
    assert fit_normalization_rows(x, range(6))["std"][1] > 0
