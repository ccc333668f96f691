"""gradcamo virtual-stain refuses what it cannot use, with exit 2 and a message naming the option and the fix
(issue 23: tracebacks for --device cuda, --steps 0, --crop 0, --batch-size 0; training with --steps 0; NaN
weights writing an all-NaN TIFF with exit 0; duplicate class names accepted)."""

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from napari_gradcamo.virtual_stain.checkpoint import VirtualStainModel, load_model, save_model  # noqa: E402
from napari_gradcamo.virtual_stain.data import StainScaling, synthetic_pairs  # noqa: E402
from napari_gradcamo.virtual_stain.diffusion import Schedule  # noqa: E402
from napari_gradcamo.virtual_stain.model import UNetConfig, VirtualStainError, build_unet  # noqa: E402
from napari_gradcamo.virtual_stain.pipeline import FitSettings, fit_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bad_inputs_common import assert_refused, run, snapshot  # noqa: E402

TINY = dict(widths=[8, 16, 16], groups=4)


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(11, 2, 2, size=32, n_cells=3)


def _model(pairs, nan=False):
    torch.manual_seed(0)
    config = UNetConfig(stain_channels=5, condition_channels=pairs[0].brightfield.shape[0], n_classes=2, **TINY)
    unet = build_unet(config).eval()
    if nan:
        with torch.no_grad():
            next(iter(unet.parameters())).fill_(float("nan"))
    scaling = StainScaling.fit([p.stains for p in pairs])
    return VirtualStainModel(unet, config, Schedule(), scaling, ["DNA", "ER", "RNA", "AGP", "Mito"], ["a", "b"],
                             [0.0] * config.condition_channels)


@pytest.fixture(scope="module")
def files(tmp_path_factory, pairs):
    import tifffile

    folder = tmp_path_factory.mktemp("vs")
    tifffile.imwrite(folder / "bf.tif", pairs[0].brightfield, photometric="minisblack")
    return {"bf": folder / "bf.tif", "model": save_model(folder / "m.safetensors", _model(pairs)),
            "nan": save_model(folder / "nan.safetensors", _model(pairs, nan=True)), "folder": folder}


def _predict(files, out, *extra, model="model"):
    return ["virtual-stain", "predict", files["bf"], "--model", files[model], "--out", out, *extra]


@pytest.mark.parametrize("extra, phrases", [
    (["--steps", "0"], ["--steps", "must be at least 1"]),
    (["--steps", "-3"], ["--steps", "must be at least 1"]),
    (["--guidance-scale", "nan"], ["--guidance-scale", "finite"]),
    (["--device", "tpu"], ["--device", "is not a device"]),
    (["--seed", "-1"], ["--seed", "0 or more"]),
])
def test_predict_options_are_refused_by_name(tmp_path, capsys, files, extra, phrases):
    code, err = run(_predict(files, tmp_path / "p.tif", *extra), capsys)
    assert_refused(code, err, *phrases)
    assert snapshot(tmp_path) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_predict_on_a_missing_gpu_is_refused_before_loading(tmp_path, capsys, files):
    code, err = run(_predict(files, tmp_path / "p.tif", "--device", "cuda"), capsys)
    assert_refused(code, err, "--device cuda: this machine has no such device", "use --device auto or cpu")
    assert snapshot(tmp_path) == {}


def test_nan_weights_are_refused_not_written_as_a_nan_tiff(tmp_path, capsys, files):
    code, err = run(_predict(files, tmp_path / "p.tif", "--steps", "2", model="nan"), capsys)
    assert_refused(code, err, "nan.safetensors", "hold NaN or inf", "Retrain the model")
    assert snapshot(tmp_path) == {}


def test_a_non_finite_prediction_is_refused(pairs):
    model = _model(pairs)
    with pytest.raises(VirtualStainError, match="prediction holds NaN or inf"):
        _model(pairs, nan=True).predict_image(pairs[0].brightfield, steps=1)
    with pytest.raises(VirtualStainError, match="steps must be a whole number from 1 to 2000"):
        model.predict_image(pairs[0].brightfield, steps=0)
    with pytest.raises(VirtualStainError, match="sampler 'euler' must be 'ddim' or 'ddpm'"):
        model.predict_image(pairs[0].brightfield, steps=1, sampler="euler")


@pytest.mark.parametrize("extra, phrases", [
    (["--crop", "0"], ["--crop", "must be at least 1"]),
    (["--crop", "30"], ["crop 30 must be a multiple of 4", "--crop 28"]),
    (["--batch-size", "0"], ["--batch-size", "must be at least 1"]),
    (["--steps", "0"], ["--steps", "must be at least 1"]),
    (["--classifier-steps", "-1"], ["--classifier-steps", "0 or more"]),
    (["--lr", "0"], ["--lr", "greater than 0"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--widths", "0", "8"], ["--widths", "must be at least 1"]),
    (["--synthetic", "-2"], ["--synthetic", "0 or more"]),
    (["--device", "cuda:9"], ["--device cuda:9", "no such device"]),
])
def test_train_options_are_refused_before_training(tmp_path, capsys, extra, phrases):
    argv = ["virtual-stain", "train", "--synthetic", "1", "--classes", "2", "--out", tmp_path / "m.safetensors",
            "--steps", "1", "--classifier-steps", "0", "--widths", "8", "16", "16", *extra]
    code, err = run(argv, capsys)
    assert_refused(code, err, *phrases)
    assert snapshot(tmp_path) == {}


def test_duplicate_class_names_are_refused(tmp_path, pairs):
    with pytest.raises(VirtualStainError, match="names 'A' twice"):
        fit_model(pairs, ["a", "A"], FitSettings(steps=1, classifier_steps=0, crop=16, **{"widths": [8, 16]}),
                  defocus_um=[0.0] * pairs[0].brightfield.shape[0])
    model = _model(pairs)
    model.class_names = ["a", "a"]
    path = save_model(tmp_path / "dup.safetensors", model)
    with pytest.raises(VirtualStainError, match="class_names .* names 'a' twice"):
        load_model(path)


def test_a_learning_rate_torch_cannot_hold_is_refused(tmp_path, capsys):
    argv = ["virtual-stain", "train", "--synthetic", "1", "--classes", "2", "--out", tmp_path / "m.safetensors",
            "--steps", "1", "--lr", "1e38"]  # was: torch RuntimeError 'cannot be converted to type float'
    code, err = run(argv, capsys)
    assert_refused(code, err, "lr must be a number in (0, 1]", "--lr")
    assert snapshot(tmp_path) == {}


def test_synthetic_model_metadata_round_trip(files):
    meta = json.loads(json.dumps(load_model(files["model"]).metadata()))
    assert meta["class_names"] == ["a", "b"]
