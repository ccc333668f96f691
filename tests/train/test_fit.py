"""gradcamo train: manifests, the crop cache, splits by well, augmentation, fit/resume, checkpoints, CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from napari_gradcamo.cli import main
from napari_gradcamo.crops.cache import build_cache
from napari_gradcamo.crops.datasets import crops_from_fields
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.progress import Cancelled, CancelToken
from napari_gradcamo.segment.field_list import ManifestError, read_manifest
from napari_gradcamo.synthetic.files import write_synthetic_manifest
from napari_gradcamo.train.data import (
    augment,
    augment_with_masks,
    class_weights_for,
    epoch_order,
    fit_normalization,
    fit_normalization_rows,
    split_by_group,
)
from napari_gradcamo.train.fit import TrainConfig, fit

CROP = [8, 32, 32]
SHAPE = (12, 48, 48)


@pytest.fixture(scope="module")
def synthetic_manifest(tmp_path_factory):
    """8 wells (4 control, 4 treated), one small field each, ~6 cells per field."""
    out = tmp_path_factory.mktemp("syn")
    return write_synthetic_manifest(out, "honest", seed=3, n_fields=8, n_cells=6, shape=SHAPE, sites_per_well=1)


@pytest.fixture(scope="module")
def cache(synthetic_manifest, tmp_path_factory):
    return build_cache(read_manifest(synthetic_manifest), CROP, tmp_path_factory.mktemp("cache"))


def tiny_config(**kw):
    base = dict(architecture_kwargs={"width": 4}, epochs=3, batch_size=8, val_fraction=0.25, patience=0, seed=2,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------ splits, balance, augmentation


def test_split_by_well_keeps_every_well_in_one_split_and_is_seeded():
    groups = np.repeat([f"P/{w}" for w in "ABCDEFGHIJ"], 5)
    y = np.repeat(np.arange(10) % 2, 5)
    a = split_by_group(groups, y, 0.2, 0.2, seed=0)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(50))
    wells = {name: set(groups[rows]) for name, rows in a.items()}
    assert not (wells["train"] & wells["val"]) and not (wells["train"] & wells["test"]) and not (wells["val"] & wells["test"])
    for name in ("train", "val", "test"):  # stratified: both classes in every split
        assert set(y[a[name]]) == {0, 1}, name
    b = split_by_group(groups, y, 0.2, 0.2, seed=0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a["val"], split_by_group(groups, y, 0.2, 0.2, seed=s)["val"]) for s in range(1, 6))


def test_class_balance_weights_and_sampler():
    y = np.array([0] * 30 + [1] * 10)
    w = class_weights_for(y, 3)
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0]) and np.mean(w[:2]) == pytest.approx(1.0)
    drawn = np.concatenate([epoch_order(y, np.arange(40), np.random.default_rng(s), "sampler") for s in range(50)])
    assert abs(np.mean(y[drawn]) - 0.5) < 0.05
    order = epoch_order(y, np.arange(40), np.random.default_rng(0), None)
    assert sorted(order.tolist()) == list(range(40))


def test_augmentation_moves_masks_with_crops_and_keeps_the_random_draws():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 4, 16, 16)).astype(np.float32)
    masks = np.zeros((6, 4, 16, 16), np.uint8)
    masks[:, :, 1:5, 2:9] = 1
    x[:, 0][masks == 1] = 50.0  # channel 0 marks the cell
    plain = augment(x, np.random.default_rng(7))
    crops, moved = augment_with_masks(x, masks, np.random.default_rng(7))
    np.testing.assert_array_equal(plain, crops)
    for crop, mask in zip(crops, moved):
        assert mask.sum() == masks[0].sum()
        assert np.all(crop[0][mask == 1] > 20) and np.all(crop[0][mask == 0] < 20)


# ------------------------------------------------------------------ manifest and cache


def test_manifest_errors_name_the_problem(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("image,class\nx.tif,control\n")
    with pytest.raises(ManifestError, match="well"):
        read_manifest(bad)
    bad.write_text("image,class,well\nmissing.tif,control,B02\n")
    with pytest.raises(ManifestError, match="row 1.*does not exist"):
        read_manifest(bad)


def test_cache_equals_in_memory_crops_and_is_reused(synthetic_manifest, cache, tmp_path):
    from napari_gradcamo.synthetic.experiment import scenario_fields

    fields = scenario_fields("honest", 3, 8, n_cells=6, shape=SHAPE, sites_per_well=1)
    direct = crops_from_fields(fields, CROP)
    assert isinstance(cache.data.x, np.memmap) and cache.data.x.shape == direct.x.shape
    np.testing.assert_array_equal(np.asarray(cache.data.x), direct.x)
    np.testing.assert_array_equal(np.asarray(cache.data.masks), direct.masks)
    assert cache.class_names == ["control", "treated"] and cache.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert set(cache.cells["well"]) == {f.metadata["well"] for f in fields}
    again = build_cache(read_manifest(synthetic_manifest), CROP, cache.folder)
    assert again.reused
    other = build_cache(read_manifest(synthetic_manifest), [4, 16, 16], cache.folder, channel_names=["Mito", "DNA"])
    assert not other.reused and other.data.x.shape[1:] == (2, 4, 16, 16)
    build_cache(read_manifest(synthetic_manifest), CROP, cache.folder)  # put it back for the other tests


def test_chunked_normalisation_equals_in_memory(cache):
    rows = np.arange(0, len(cache.data), 2)
    a = fit_normalization_rows(cache.data.x, rows, chunk=7)
    b = fit_normalization(np.asarray(cache.data.x)[rows])
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5)
    np.testing.assert_allclose(a["std"], b["std"], rtol=1e-4)


# ------------------------------------------------------------------ fit, checkpoints, resume


def test_fit_writes_a_checkpoint_with_full_metadata(cache, tmp_path):
    result = fit(cache.data, cache.class_names, cache.channel_names, CROP, tiny_config(epochs=2, outside_gradient_weight=0.5), tmp_path,
                 extra_metadata={"manifest": "m.csv"})
    bundle = load_checkpoint(tmp_path / "model.safetensors")
    meta = bundle.metadata
    assert meta.class_names == ["control", "treated"] and meta.channel_names == cache.channel_names
    assert meta.crop_shape == CROP
    rule = meta.training["target_layer_rule"]  # the stored layer comes from the validation rule
    assert meta.target_layer == rule["layer"] == max(rule["deletion_drop"], key=rule["deletion_drop"].get)
    assert set(rule["deletion_drop"]) == {"stage1", "stage2", "stage3"} and rule["validation_crops"] > 0
    assert meta.normalization["method"] == "fixed" and len(meta.normalization["mean"]) == 5
    t = meta.training
    assert t["config"]["outside_gradient_weight"] == 0.5 and t["config"]["epochs"] == 2 and t["manifest"] == "m.csv"
    assert t["regularizer"]["kinds"] == ["outside-gradient"] and t["regularizer"]["outside_gradient_weight"] == 0.5
    assert t["epochs_run"] == 2 and len(t["history"]["val_loss"]) == 2 and np.isfinite(t["history"]["penalty"]).all()
    assert not set(t["split_wells"]["train"]) & set(t["split_wells"]["val"])
    assert {"torch", "napari_gradcamo", "python"} <= set(t)
    if (Path(__file__).resolve().parents[2] / ".git").exists():
        assert len(t["git_revision"]) == 40
    for name in ("last.safetensors", "resume.pt", "history.csv"):
        assert (tmp_path / name).exists()
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2
    state = {k: v for k, v in result.model.state_dict().items()}
    assert all(torch.equal(state[k], v) for k, v in bundle.model.state_dict().items())


def test_resume_continues_exactly(cache, tmp_path):
    config = tiny_config(epochs=2)
    straight = fit(cache.data, cache.class_names, cache.channel_names, CROP, config, tmp_path / "a")
    token = CancelToken()

    def stop_after_first(epoch, stats):
        if epoch == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        fit(cache.data, cache.class_names, cache.channel_names, CROP, config, tmp_path / "b", epoch_end=stop_after_first,
            cancel=token)
    assert json.loads(torch.load(tmp_path / "b" / "resume.pt", weights_only=True)["history"])["loss"].__len__() == 1
    resumed = fit(cache.data, cache.class_names, cache.channel_names, CROP, config, tmp_path / "b", resume=True)
    assert resumed.history.loss == straight.history.loss and resumed.history.val_loss == straight.history.val_loss
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"training settings differ .*\(lr: [0-9.e-]+ → 0\.01\); give the same options"):
        fit(cache.data, cache.class_names, cache.channel_names, CROP, tiny_config(lr=1e-2), tmp_path / "b", resume=True)


def test_early_stopping_keeps_the_best_epoch(cache, tmp_path, monkeypatch):
    import napari_gradcamo.train.fit as T

    losses = iter([1.0, 0.5, 0.8, 0.9, 0.7, 0.6])
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: {"loss": next(losses), "accuracy": 0.5})
    result = fit(cache.data, cache.class_names, cache.channel_names, CROP, tiny_config(epochs=6, patience=2), tmp_path)
    assert result.stopped_early and len(result.history.loss) == 4 and result.best_epoch == 2
    assert result.metadata.training["best_epoch"] == 2 and result.metadata.training["stopped_early"]
    last = load_checkpoint(tmp_path / "last.safetensors").model.state_dict()
    best = load_checkpoint(tmp_path / "model.safetensors").model.state_dict()
    assert any(not torch.equal(last[k], best[k]) for k in best)  # the kept weights are epoch 2's, not epoch 4's


# ------------------------------------------------------------------ the command line


def test_cli_synthetic_train_audit_end_to_end(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "data"), "--fields", "8", "--cells", "6", "--seed", "4",
                 "--sites-per-well", "2"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert main(["train", manifest, "--out", str(tmp_path / "run"), "--epochs", "2", "--width", "4",
                 "--val-fraction", "0.5", "--batch-size", "8", "--outside-gradient-weight", "0.3", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] == 2 and summary["crops"]["val"] > 0
    assert summary["regularizer"] == ["outside-gradient"]
    assert summary["target_layer"] == load_checkpoint(tmp_path / "run" / "model.safetensors").metadata.target_layer
    checkpoint = tmp_path / "run" / "model.safetensors"
    assert load_checkpoint(checkpoint).metadata.training["config"]["outside_gradient_weight"] == 0.3
    assert (tmp_path / "run" / "crops" / "crops.npy").exists()
    row = read_manifest(manifest).iloc[0]
    assert main(["audit", row["image"], "--model", str(checkpoint), "--masks", row["masks"],
                 "--out", str(tmp_path / "audit")]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] > 0
    # resuming a finished run only rewrites its outputs
    assert main(["train", manifest, "--out", str(tmp_path / "run"), "--epochs", "2", "--width", "4",
                 "--val-fraction", "0.5", "--batch-size", "8", "--outside-gradient-weight", "0.3", "--device", "cpu",
                 "--resume"]) == 0


def test_masked_crops_train_as_the_audit_sees_them(cache, tmp_path, capsys):
    """--crop-mode masked: the model sees only its cell (the rest = the padding value) in training, validation
    and the audit; the checkpoint says so."""
    from napari_gradcamo.crops.datasets import MASK_CELL
    from napari_gradcamo.train.loop import model_input

    rows = np.arange(6)
    seen = model_input(cache.data, rows, {"method": "none"}, "masked", padding_value=-3.0)
    outside = np.asarray(cache.data.masks[rows]) != MASK_CELL
    assert (seen.transpose(1, 0, 2, 3, 4)[:, outside] == -3.0).all()
    inside = ~outside
    raw = np.asarray(cache.data.x[rows], np.float32)
    assert np.array_equal(seen.transpose(1, 0, 2, 3, 4)[:, inside], raw.transpose(1, 0, 2, 3, 4)[:, inside])

    config = tiny_config(epochs=1, crop_mode="masked", padding_value=-3.0)
    fit(cache.data, cache.class_names, cache.channel_names, CROP, config, tmp_path)
    meta = load_checkpoint(tmp_path / "model.safetensors").metadata
    assert meta.crop_mode == "masked" and meta.padding_value == -3.0
    assert meta.training["config"]["crop_mode"] == "masked"
    assert "masked crops" in meta.training["target_layer_rule"]["rule"]
    with pytest.raises(ValueError, match="crop_mode"):
        tiny_config(crop_mode="cropped").validate()


def test_cli_trains_on_masked_crops_and_audits_them(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "data"), "--fields", "4", "--cells", "5", "--seed", "2",
                 "--sites-per-well", "1"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert main(["train", manifest, "--out", str(tmp_path / "run"), "--epochs", "1", "--width", "4",
                 "--val-fraction", "0.5", "--batch-size", "8", "--device", "cpu", "--crop-mode", "masked"]) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "run" / "model.safetensors"
    assert load_checkpoint(checkpoint).metadata.crop_mode == "masked"
    row = read_manifest(manifest).iloc[0]
    assert main(["audit", row["image"], "--model", str(checkpoint), "--masks", row["masks"],
                 "--out", str(tmp_path / "audit")]) == 0
    report = json.loads(capsys.readouterr().out)
    table = pd.read_csv(report["table"])
    assert report["cells"] > 0 and table["gradcamo"].notna().any()
    with pytest.raises(SystemExit) as refused:  # argparse: exit code 2 with the choices named
        main(["train", manifest, "--out", str(tmp_path / "bad"), "--crop-mode", "cut"])
    assert refused.value.code == 2 and "context" in capsys.readouterr().err


def test_a_2d_model_gets_its_layer_from_the_validation_rule(tmp_path):
    """The deletion rule picks the stored layer of 2D models too (it fell back to the default layer before)."""
    manifest = write_synthetic_manifest(tmp_path / "data", n_fields=8, n_cells=6, sites_per_well=1, planar=True)
    crops = build_cache(read_manifest(manifest), [1, 32, 32], tmp_path / "cache")
    assert crops.data.x.shape[2] == 1
    config = tiny_config(architecture="small-cnn-2d", epochs=2)
    fit(crops.data, crops.class_names, crops.channel_names, [1, 32, 32], config, tmp_path / "model")
    meta = load_checkpoint(tmp_path / "model" / "model.safetensors").metadata
    rule = meta.training["target_layer_rule"]
    assert "deletion_drop" in rule, rule["rule"]
    assert meta.target_layer == rule["layer"] == max(rule["deletion_drop"], key=rule["deletion_drop"].get)
    assert set(rule["deletion_drop"]) == {"stage1", "stage2", "stage3"} and rule["validation_crops"] > 0
