"""The Python API checks its arguments as the command line does (issue 23): a typed error naming the argument
and the fix, never a silently wrong result or an error from deep inside numpy/torch; plain arrays accepted."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from napari_gradcamo.audit.run import AuditSettings, iter_audit, run_audit
from napari_gradcamo.io.images import ImageError, make_image
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.output import results

CHANNELS = ["DNA", "ER"]


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    meta = ModelMetadata("small-cnn-3d", ["ctrl", "drug"], CHANNELS, [4, 16, 16], architecture_kwargs={"width": 4})
    return ModelBundle(build_model(meta).eval(), meta)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    data = rng.random((len(CHANNELS), 4, 24, 36)).astype(np.float32)
    labels = np.zeros((4, 24, 36), np.uint16)
    for i in range(13):  # 13 cells: '12' read digit by digit would pick labels 1 and 2
        y, x = 2 + 7 * (i // 5), 1 + 7 * (i % 5)
        labels[1:3, y:y + 5, x:x + 5] = i + 1
    return data, labels


# ------------------------------------------------------------------ silently wrong before: now refused


def test_apply_threshold_refuses_nan_and_non_numbers():
    table = pd.DataFrame({"status": [results.STATUS_AUDITED] * 3, "gradcamo": [0.1, 0.6, np.nan]})
    assert results.apply_threshold(table, 0.5)["flagged"].tolist() == [True, False, True]
    for bad in (math.nan, math.inf, "0.5", None, True):
        with pytest.raises(ValueError, match="threshold .* must be a finite number"):
            results.apply_threshold(table, bad)
    with pytest.raises(ValueError, match="needs a results table"):
        results.apply_threshold(table.drop(columns="status"), 0.5)
    with pytest.raises(ValueError, match="Cannot flag on"):
        results.apply_threshold(table, 0.5, on=None)


def test_only_labels_text_is_refused_not_read_digit_by_digit(bundle, scene):
    data, labels = scene
    with pytest.raises(ValueError, match="only_labels '12' must be a whole number or a list of label ids"):
        run_audit(data, labels, bundle, only_labels="12")
    for bad in ([1.5], [True], {"a": 1}, b"12", [1, "2"]):
        with pytest.raises(ValueError, match="only_labels"):
            run_audit(data, labels, bundle, only_labels=bad)
    assert run_audit(data, labels, bundle, only_labels=12).table["label"].tolist() == [12]
    assert run_audit(data, labels, bundle, only_labels=np.array([12, 3])).table["label"].tolist() == [3, 12]


# ------------------------------------------------------------------ notebook arguments accepted


def test_plain_arrays_are_accepted_as_images(bundle, scene):
    data, labels = scene
    image = make_image(data, "CZYX")
    expected = run_audit(image, labels, bundle, only_labels=[1, 2]).table
    for array in (data, data.astype(np.float64), data.tolist()):
        table = run_audit(array, labels, bundle, only_labels=[1, 2]).table
        pd.testing.assert_frame_equal(table, expected)
    one = run_audit(data[:1], labels, _one_channel(bundle), only_labels=[4]).table  # (1, Z, Y, X)
    zyx = run_audit(data[0], labels, _one_channel(bundle), only_labels=[4]).table  # (Z, Y, X)
    pd.testing.assert_frame_equal(one, zyx)
    with pytest.raises(ImageError, match=r"image is an array of shape \(2, 4, 24, 35\).*labels' shape \(4, 24, 36\)"):
        run_audit(data[..., :35], labels, bundle)
    with pytest.raises(ImageError, match="image must be an Image"):
        run_audit("field.tif", labels, bundle)
    with pytest.raises(ImageError, match="NaN/Inf"):
        run_audit(np.where(data > 0.99, np.nan, data), labels, bundle)


def _one_channel(bundle):
    torch.manual_seed(0)
    meta = bundle.metadata.model_copy(update={"channel_names": ["DNA"]})
    return ModelBundle(build_model(meta).eval(), meta)


def test_settings_as_a_dict_or_refused_by_type(bundle, scene):
    data, labels = scene
    result = run_audit(data, labels, bundle, {"flag_on": "gradcamo", "threshold": 0.5}, only_labels=[1])
    assert result.record["settings"]["audit"]["flag_on"] == "gradcamo"
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['treshold'\]"):
        run_audit(data, labels, bundle, {"treshold": 0.5})
    with pytest.raises(ValueError, match="settings must be an AuditSettings .* not list"):
        run_audit(data, labels, bundle, [("threshold", 0.5)])
    with pytest.raises(ValueError, match="bundle must be a ModelBundle"):
        run_audit(data, labels, "model.safetensors")


@pytest.mark.parametrize("field, value, message", [
    ("method", None, "method None must be the name of a CAM method"),
    ("method", 3, "method 3 must be the name"),
    ("target_layer", 4, "target_layer 4 must be a layer name"),
    ("target_class", 1.5, "target_class 1.5 must be a class name"),
    ("flag_on", None, "flag_on None is not a score"),
    ("threshold", "0.5", "threshold '0.5' is outside"),
    ("batch_size", "8", "batch_size '8' must be a whole number"),
    ("planes", 0, "planes 0 must be a whole number ≥ 1"),
    ("occlusion", "yes", "occlusion 'yes' must be True or False"),
    ("channel_map", "01", "channel_map '01' must be one image channel index per model channel"),
    ("device", "tpu", "device 'tpu' is not a device"),
    ("device", 0, "device 0 is not a device"),
])
def test_settings_fields_of_the_wrong_type_are_named(bundle, scene, field, value, message):
    data, labels = scene
    with pytest.raises(ValueError, match=message):
        run_audit(data, labels, bundle, AuditSettings(**{field: value}))
    with pytest.raises(ValueError, match=message):
        next(iter_audit(data, labels, bundle, {field: value}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_named_before_any_compute(bundle, scene):
    data, labels = scene
    with pytest.raises(ValueError, match="device 'cuda': this machine has no such device .*cpu"):
        run_audit(data, labels, bundle, AuditSettings(device="cuda"))


def test_progress_and_cancel_of_the_wrong_type(bundle, scene):
    data, labels = scene
    with pytest.raises(ValueError, match="progress must be a function"):
        run_audit(data, labels, bundle, progress="bar")
    with pytest.raises(ValueError, match="cancel must be a napari_gradcamo.CancelToken"):
        run_audit(data, labels, bundle, cancel=True)


# ------------------------------------------------------------------ the other entry points of napari_gradcamo.__all__


def test_readers_and_checkpoint_functions_name_arguments_of_the_wrong_type(tmp_path):
    import napari_gradcamo as api
    from napari_gradcamo.models.metadata import CheckpointError

    for reader in (api.read_image, api.read_labels):
        for bad in (None, 3, np.zeros(3)):
            with pytest.raises(ImageError, match="path must be a file path"):
                reader(bad)
    with pytest.raises(CheckpointError, match="path must be a checkpoint file path"):
        api.load_checkpoint(None)
    with pytest.raises(CheckpointError, match="trusted_factory must be"):
        api.load_checkpoint(tmp_path / "m.safetensors", trusted_factory=["os:system"])
    meta = ModelMetadata("small-cnn-3d", ["a", "b"], ["x"], [4, 16, 16], architecture_kwargs={"width": 2})
    with pytest.raises(CheckpointError, match="model must be a torch.nn.Module, not str"):
        api.save_checkpoint(tmp_path / "m.safetensors", "model", meta)
    with pytest.raises(CheckpointError, match="metadata must be a ModelMetadata"):
        api.save_checkpoint(tmp_path / "m.safetensors", torch.nn.Linear(2, 2), ["meta"])
    with pytest.raises(CheckpointError, match="class_names"):
        api.save_checkpoint(tmp_path / "m.safetensors", torch.nn.Linear(2, 2), {**meta.model_dump(), "class_names": ["a"]})
    assert not list(tmp_path.iterdir())
    saved = api.save_checkpoint(tmp_path / "m.safetensors", build_model(meta), meta.model_dump())  # a dict is fine
    assert api.load_checkpoint(saved).metadata == meta


@pytest.mark.parametrize("kwargs, message", [
    (dict(axes=3), "axes must be text"),
    (dict(channel_names="DNA"), "channel_names must be a list of names"),
    (dict(channel_names=[1]), "channel_names must be a list of names"),
    (dict(voxel_size="abc"), "voxel_size must be"),
    (dict(voxel_size=[1.0, float("nan"), 1.0]), "voxel_size must be"),
])
def test_make_image_names_arguments_of_the_wrong_type(kwargs, message):
    with pytest.raises(ImageError, match=message):
        make_image(np.ones((1, 2, 4, 4), np.float32), **{"axes": "CZYX", **kwargs})
    assert make_image(np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4), "CZYX", np.array(["DNA"]),
                      np.array([2.0, 0.5, 0.5])).voxel_size == (2.0, 0.5, 0.5)
