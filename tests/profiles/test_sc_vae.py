"""The skip-connection VAE (``--objective sc-vae``): training, safe checkpoints, shortcuts in use, profiles, latent Grad-CAMO."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from napari_gradcamo.audit.batch import BatchCrops, score_batch
from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.latent_targets import class_direction, latent_means, projection_bundle, unit_direction
from napari_gradcamo.cli import main
from napari_gradcamo.crops.datasets import MASK_CELL, MASK_OTHER
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.checkpoint import load_checkpoint, normalize_crops
from napari_gradcamo.models.metadata import CheckpointError, ModelBundle, ModelMetadata
from napari_gradcamo.models.vae import CropVAE, Shortcut, SkipStage, SkipUp, channel_resampler
from napari_gradcamo.profiles.extract import extract_profiles, feature_columns
from napari_gradcamo.synthetic.generator import STAINS
from napari_gradcamo.train.vae_loop import VaeConfig
from vae_helpers import CROP, fit_small_vae


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("sc-vae")
    return fit_small_vae(crops, "sc-vae", out), out


def _normalised(meta, x):
    return torch.as_tensor(normalize_crops(np.asarray(x), meta.normalization))


def _switch(model, where: str, gain: float):
    """Set the gain of every shortcut in ``model.<where>`` (encoder or decoder); returns how many."""
    found = [m for m in getattr(model, where).modules() if isinstance(m, Shortcut)]
    for m in found:
        m.gain = gain
    return len(found)


def test_sc_vae_training_lowers_the_loss(trained):
    result, _ = trained
    h = result.history
    assert len(h.loss) == 4 and np.isfinite(h.loss).all() and np.isfinite(h.val_loss).all()
    assert h.loss[-1] < h.loss[0] and h.reconstruction[-1] < h.reconstruction[0]
    assert h.val_loss[result.best_epoch - 1] == min(h.val_loss)
    assert h.mutual_information == [0.0] * 4  # no MI critic: the difference from the VAE is the network


def test_checkpoint_is_safetensors_and_round_trips_to_identical_profiles(trained, crops):
    result, out = trained
    path = out / "model.safetensors"
    with safe_open(str(path), "pt") as f:  # plain tensors + JSON metadata, nothing pickled
        keys = set(f.keys())
    assert "encoder.stage1.body.0.weight" in keys and not any(k.endswith(".mix") for k in keys)
    bundle = load_checkpoint(path)
    meta = bundle.metadata
    assert meta.architecture == "vae-3d" and meta.architecture_kwargs["skip_connections"] is True
    assert meta.training["objective"] == "sc-vae" and meta.class_names == ["z00", "z01", "z02", "z03"]
    assert meta.target_layer == "encoder.stage1"
    assert isinstance(bundle.model.encoder.stage1, SkipStage) and isinstance(bundle.model.decoder[0], SkipUp)
    memory = ModelBundle(result.model, result.metadata, "memory")
    np.testing.assert_array_equal(latent_means(bundle, crops.x[:8]), latent_means(memory, crops.x[:8]))
    loaded = extract_profiles(bundle, crops, device="cpu")
    again = extract_profiles(memory, crops, device="cpu")
    columns = feature_columns(loaded)
    assert len(columns) == 4  # the latent means
    np.testing.assert_array_equal(loaded[columns].to_numpy(), again[columns].to_numpy())
    np.testing.assert_array_equal(loaded["gradcamo"].to_numpy(), again["gradcamo"].to_numpy())
    np.testing.assert_allclose(loaded[columns].to_numpy(), latent_means(bundle, crops.x), rtol=1e-5, atol=1e-6)


def _plain_twin(sc_model, crop):
    """A plain VAE carrying the SC-VAE's weights (``stageK.body.i`` → ``stageK.i``; ``decoder.j.body`` → ``decoder.j``)."""
    plain = CropVAE(len(STAINS), crop, latent_dim=4, width=4).eval()
    state = {k.replace(".body", ""): v for k, v in sc_model.state_dict().items()}
    plain.load_state_dict(state)  # strict: every tensor has its counterpart
    return plain


def test_the_shortcuts_carry_signal(trained, crops):
    result, _ = trained
    model = copy.deepcopy(result.model).eval()
    assert _switch(model, "encoder", 1.0) == 3 and _switch(model, "decoder", 1.0) == 3
    plain = _plain_twin(model, CROP)
    x = _normalised(result.metadata, crops.x[:16])
    with torch.no_grad():
        recon, mu, _, _ = model.reconstruct(x, sample=False)
        _switch(model, "decoder", 0.0)  # decoder shortcuts off: same code, another reconstruction
        recon_dec_off, mu_dec_off, _, _ = model.reconstruct(x, sample=False)
        _switch(model, "encoder", 0.0)  # and the encoder's: another code
        recon_off, mu_off, _, _ = model.reconstruct(x, sample=False)
        recon_plain, mu_plain, _, _ = plain.reconstruct(x, sample=False)
    torch.testing.assert_close(mu_dec_off, mu)
    assert (mu_off - mu).abs().max() > 1e-3 * mu.abs().max()
    assert (recon_dec_off - recon).abs().mean() > 0.05 * recon.abs().mean()
    # with every shortcut off, the SC-VAE computes exactly the plain VAE with the same weights: the
    # shortcuts are the whole difference, and with them on the outputs differ
    torch.testing.assert_close(mu_off, mu_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(recon_off, recon_plain, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(recon, recon_plain, atol=1e-3)


def test_shortcut_resampling_without_weights():
    mix = channel_resampler(2, 4)
    np.testing.assert_allclose(mix.numpy(), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(channel_resampler(3, 3).numpy(), np.eye(3))
    np.testing.assert_allclose(channel_resampler(8, 4).sum(1).numpy(), np.ones(4), rtol=1e-6)
    x = torch.arange(2 * 1 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 2, 4, 4)
    down = Shortcut(1, 2, down=(1, 2, 2))(x)  # one channel copied to two, 2×2 blocks averaged in y, x
    assert down.shape == (2, 2, 2, 2, 2) and not list(Shortcut(1, 2).parameters())
    np.testing.assert_allclose(down[0, 1, 0, 0, 0].item(), x[0, 0, 0, :2, :2].mean().item())
    up = Shortcut(2, 1, up=(2, 2, 2))(down)
    assert up.shape == (2, 1, 4, 4, 4)


def test_plain_vae_is_unchanged_and_sc_2d_crops():
    plain = CropVAE(2, (8, 32, 32), latent_dim=3, width=4)
    assert "encoder.stage1.0.weight" in plain.state_dict()  # the plain VAE's layer names, as before
    assert not any(isinstance(m, Shortcut) for m in plain.modules())
    sc = CropVAE(2, (1, 32, 32), latent_dim=3, width=4, skip_connections=True)
    recon, mu, _, _ = sc.reconstruct(torch.zeros(2, 2, 1, 32, 32))
    assert recon.shape == (2, 2, 1, 32, 32) and mu.shape == (2, 3)
    with pytest.raises(ValueError, match="small CNN encoder"):
        CropVAE(2, (8, 32, 32), encoder="efficientnet-b0", skip_connections=True)


def test_wrong_options_and_checkpoint_values_are_refused():
    with pytest.raises(ValueError, match="--arch small-cnn-3d"):
        VaeConfig(objective="sc-vae", encoder="efficientnet-b0").validate()
    with pytest.raises(ValueError, match="needs --objective infomax-vae"):
        VaeConfig(objective="sc-vae", mi_weight=1.0).validate()
    with pytest.raises(ValueError, match="sc-vae"):
        VaeConfig(objective="skip-vae").validate()
    meta = ModelMetadata("vae-3d", ["z0", "z1"], list(STAINS), CROP,
                         architecture_kwargs={"width": 4, "skip_connections": "yes"})
    with pytest.raises(CheckpointError, match="true or false"):
        build_model(meta)


def _latent_gradcamo(bundle, crops, targets):
    codes = np.asarray(crops.masks[:6])
    batch = BatchCrops(np.asarray(crops.x[:6]), codes == MASK_CELL, codes == MASK_OTHER, [None] * 6)
    with CamEngine(bundle.model, "encoder.stage1", "gradcam", "cpu") as engine:
        return score_batch(engine, batch, bundle.metadata.normalization, targets)


def test_latent_directions_and_units_on_the_sc_vae(trained, crops):
    result, out = trained
    vae = load_checkpoint(out / "model.safetensors")
    mu = latent_means(vae, crops.x)
    direction = class_direction(mu, np.array(["control", "treated"])[crops.y], "control", "treated")
    projected = projection_bundle(vae, direction, ["treatment"])
    with torch.no_grad():
        s = projected.model(_normalised(vae.metadata, crops.x[:6])).numpy()
    np.testing.assert_allclose(s[:, 0], mu[:6] @ direction, rtol=1e-4, atol=1e-4)
    first = _latent_gradcamo(projected, crops, [0] * 6)
    assert np.isfinite(first.raw_maps).all() and (first.raw_maps >= 0).all() and first.raw_maps.any()
    np.testing.assert_array_equal(first.raw_maps, _latent_gradcamo(projected, crops, [0] * 6).raw_maps)
    assert all(0.0 <= sc.gradcamo <= 1.0 for sc in first.scores if np.isfinite(sc.gradcamo))
    unit = _latent_gradcamo(projection_bundle(vae, unit_direction(4, 1)), crops, [0] * 6)
    raw = _latent_gradcamo(vae, crops, [1] * 6)  # the raw checkpoint: "class" 1 = latent unit 1
    np.testing.assert_allclose(unit.raw_maps, raw.raw_maps, rtol=1e-4, atol=1e-6)


def test_cli_train_sc_vae_then_profile(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "data"), "--fields", "8", "--cells", "6", "--seed", "4",
                 "--sites-per-well", "1"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    # a wrong combination is refused (exit 2) before any crop is cut
    assert main(["train", manifest, "--out", str(tmp_path / "bad"), "--objective", "sc-vae",
                 "--arch", "efficientnet-b0"]) == 2
    assert "--arch small-cnn-3d" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "crops").exists()
    assert main(["train", manifest, "--out", str(tmp_path / "run"), "--objective", "sc-vae", "--epochs", "2",
                 "--width", "4", "--latent-dim", "5", "--batch-size", "8", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objective"] == "sc-vae" and summary["epochs_run"] == 2 and summary["target_layer"] == "encoder.stage1"
    checkpoint = tmp_path / "run" / "model.safetensors"
    assert load_checkpoint(checkpoint).metadata.architecture_kwargs["skip_connections"] is True
    assert main(["profile", manifest, "--model", str(checkpoint), "--out", str(tmp_path / "p"), "--device", "cpu",
                 "--no-umap", "--cache", str(tmp_path / "run" / "crops")]) == 0
    cells = pd.read_parquet(tmp_path / "p" / "cells.parquet")
    assert len([c for c in cells.columns if c.startswith("f_")]) == 5 and np.isfinite(cells["f_000"]).all()
