"""Checkpoints: safetensors + JSON metadata round trip; pickles, corrupt files and bad metadata refused."""

import json

import numpy as np
import pytest
import torch

from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.checkpoint import load_checkpoint, normalize_crops, save_checkpoint
from napari_gradcamo.models.metadata import CheckpointError, ModelMetadata

META = dict(architecture="small-cnn-3d", class_names=["ctrl", "drug"], channel_names=["DNA", "ER"], crop_shape=[4, 16, 16],
            architecture_kwargs={"width": 4})


def _model():
    torch.manual_seed(0)
    return build_model(ModelMetadata(**META)).eval()


def test_safetensors_roundtrip_keeps_weights_and_metadata(tmp_path):
    model = _model()
    meta = ModelMetadata(**META, target_layer="stage2")
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    bundle = load_checkpoint(path)
    x = torch.randn(2, 2, 4, 16, 16)
    torch.testing.assert_close(bundle.model(x), model(x))
    assert bundle.metadata.class_names == ["ctrl", "drug"] and bundle.metadata.target_layer == "stage2"
    assert "2 classes (ctrl, drug)" in bundle.describe() and "4×16×16" in bundle.describe()
    assert not bundle.model.training


def test_plain_state_dict_with_sidecar_json_loads(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(META))
    bundle = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 2, 4, 16, 16)
    torch.testing.assert_close(bundle.model(x), model(x))


def test_pickled_whole_model_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save(_model(), tmp_path / "m.pt")  # a full pickled nn.Module
    (tmp_path / "m.json").write_text(json.dumps(META))
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(tmp_path / "m.pt")
    assert not marker.exists()


class _Exploit:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_malicious_pickle_does_not_execute(tmp_path):
    payload = _Exploit()
    payload.target = str(tmp_path / "pwned")
    torch.save({"weight": payload}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_corrupt_files_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), ModelMetadata(**META))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="corrupt|pickled"):
        load_checkpoint(tmp_path / "noise.pt")


def test_metadata_problems_are_named(tmp_path):
    model = _model()
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="no napari-gradcamo metadata"):
        load_checkpoint(tmp_path / "bare.safetensors")
    missing = {k: v for k, v in META.items() if k != "crop_shape"}
    save_file(state, str(tmp_path / "missing.safetensors"), metadata={"napari_gradcamo": json.dumps(missing)})
    with pytest.raises(CheckpointError, match="lacks crop_shape"):
        load_checkpoint(tmp_path / "missing.safetensors")
    unknown = dict(META, architecture="resnet-9000")
    save_file(state, str(tmp_path / "unknown.safetensors"), metadata={"napari_gradcamo": json.dumps(unknown)})
    with pytest.raises(CheckpointError, match="Unknown architecture 'resnet-9000'"):
        load_checkpoint(tmp_path / "unknown.safetensors")
    wrong = dict(META, class_names=["a", "b", "c"])
    save_file(state, str(tmp_path / "wrong.safetensors"), metadata={"napari_gradcamo": json.dumps(wrong)})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "wrong.safetensors")


def test_any_torch_classifier_via_factory(tmp_path):
    from analytic_models import channel_mean_classifier

    meta = ModelMetadata("custom", ["on", "off"], ["a", "b"], [2, 8, 8],
                         architecture_kwargs={"factory": "analytic_models:channel_mean_classifier"})
    path = save_checkpoint(tmp_path / "c.safetensors", channel_mean_classifier(2, 2), meta)
    with pytest.raises(CheckpointError, match="--trust-factory analytic_models:channel_mean_classifier"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="Nothing was imported"):
        load_checkpoint(path, trusted_factory="analytic_models:other_function")
    bundle = load_checkpoint(path, trusted_factory="analytic_models:channel_mean_classifier")
    assert type(bundle.model).__name__ == "ChannelMeanClassifier"


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b3", "efficientnet-b7"])
def test_efficientnet_3d_runs_on_21_slices(name):
    model = build_model(ModelMetadata(name, ["a", "b", "c"], list("12345"), [21, 64, 64])).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 5, 21, 64, 64)).shape == (1, 3)


def test_normalisations():
    x = np.random.default_rng(0).normal(5, 2, (3, 2, 2, 8, 8)).astype(np.float32)
    fixed = normalize_crops(x, {"method": "fixed", "mean": [5, 5], "std": [2, 2]})
    assert abs(fixed.mean()) < 0.1 and abs(fixed.std() - 1) < 0.1
    pct = normalize_crops(x, {"method": "percentile", "low": 0, "high": 100})
    assert pct.min() == pytest.approx(0) and pct.max() == pytest.approx(1)
    with pytest.raises(CheckpointError, match="Unknown normalization"):
        normalize_crops(x, {"method": "magic"})
