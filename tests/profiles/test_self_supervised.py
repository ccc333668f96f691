"""Self-supervised profiles: VAE / InfoMax VAE training, checkpoints, latent Grad-CAMO, hand-crafted features, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from napari_gradcamo.audit.batch import BatchCrops, score_batch
from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.latent_targets import class_direction, latent_means, projection_bundle, unit_direction
from napari_gradcamo.cli import main
from napari_gradcamo.crops.datasets import MASK_CELL, MASK_OTHER
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.models.metadata import ModelBundle
from napari_gradcamo.models.vae import CropVAE, interpolated_mi_bound
from napari_gradcamo.profiles.handcrafted import handcrafted_profiles, shape_features
from napari_gradcamo.synthetic.generator import STAINS
from vae_helpers import fit_small_vae


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    return fit_small_vae(crops, "infomax-vae", out), out


def test_vae_training_lowers_the_loss(trained):
    result, _ = trained
    h = result.history
    assert len(h.loss) == 4 and np.isfinite(h.loss).all() and np.isfinite(h.mutual_information).all()
    assert h.loss[-1] < h.loss[0] and h.reconstruction[-1] < h.reconstruction[0]
    assert h.val_loss[result.best_epoch - 1] == min(h.val_loss)


def test_vae_checkpoint_round_trip_and_latent_means(trained, crops):
    result, out = trained
    bundle = load_checkpoint(out / "model.safetensors")
    meta = bundle.metadata
    assert meta.architecture == "vae-3d" and meta.class_names == ["z00", "z01", "z02", "z03"]
    assert meta.training["class_names"] == ["control", "treated"] and meta.training["objective"] == "infomax-vae"
    mu = latent_means(bundle, crops.x[:5])
    assert mu.shape == (5, 4)
    np.testing.assert_allclose(mu, latent_means(ModelBundle(result.model, result.metadata), crops.x[:5]), atol=1e-5)


def _latent_gradcamo(bundle, crops, targets):
    codes = np.asarray(crops.masks[:6])
    batch = BatchCrops(np.asarray(crops.x[:6]), codes == MASK_CELL, codes == MASK_OTHER, [None] * 6)
    with CamEngine(bundle.model, "encoder.stage1", "gradcam", "cpu") as engine:
        return score_batch(engine, batch, bundle.metadata.normalization, targets)


def test_latent_cam_is_finite_and_reproducible(trained, crops):
    result, _ = trained
    vae = ModelBundle(result.model, result.metadata, "vae")
    mu = latent_means(vae, crops.x)
    direction = class_direction(mu, np.array(["control", "treated"])[crops.y], "control", "treated")
    projected = projection_bundle(vae, direction, ["treatment"])
    assert projected.metadata.class_names == ["treatment", "-treatment"]
    with torch.no_grad():  # the wrapper's "logits" are the projections (s, −s)
        x = torch.as_tensor(np.asarray(crops.x[:6]))
        x = (x - torch.tensor(vae.metadata.normalization["mean"])[:, None, None, None]) / torch.tensor(
            vae.metadata.normalization["std"])[:, None, None, None]
        s = projected.model(x).numpy()
    np.testing.assert_allclose(s[:, 0], mu[:6] @ direction, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s[:, 1], -s[:, 0])
    first = _latent_gradcamo(projected, crops, [0] * 6)
    again = _latent_gradcamo(projected, crops, [0] * 6)
    assert np.isfinite(first.raw_maps).all() and (first.raw_maps >= 0).all() and first.raw_maps.any()
    np.testing.assert_array_equal(first.raw_maps, again.raw_maps)
    scores = [sc.gradcamo for sc in first.scores]
    assert all(0.0 <= g <= 1.0 for g in scores if np.isfinite(g))
    unit = _latent_gradcamo(projection_bundle(vae, unit_direction(4, 2)), crops, [0] * 6)
    raw = _latent_gradcamo(vae, crops, [2] * 6)  # the raw checkpoint: "class" 2 = latent unit 2
    np.testing.assert_allclose(unit.raw_maps, raw.raw_maps, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="latent size 4"):
        projection_bundle(vae, np.ones(3))


def test_interpolated_bound_limits():
    scores = 10.0 * torch.eye(8)
    assert float(interpolated_mi_bound(scores, 1.0)) == pytest.approx(np.log(8), abs=1e-3)  # InfoNCE: ≤ log B
    assert float(interpolated_mi_bound(scores, 0.0)) == pytest.approx(10.0, abs=1e-5)  # NWJ, baseline 1
    assert abs(float(interpolated_mi_bound(torch.zeros(8, 8), 0.5))) < 1e-6  # a constant critic: no information
    with pytest.raises(ValueError):
        interpolated_mi_bound(scores, 1.5)


def test_2d_crops_and_bad_crop_shapes():
    vae = CropVAE(2, (1, 32, 32), latent_dim=3, width=4)
    recon, mu, logvar, z = vae.reconstruct(torch.zeros(2, 2, 1, 32, 32))
    assert recon.shape == (2, 2, 1, 32, 32) and mu.shape == (2, 3)
    with pytest.raises(ValueError, match="multiples of 4"):
        CropVAE(2, (8, 30, 32))


def test_handcrafted_shape_features_of_a_ball(crops):
    zz, yy, xx = np.mgrid[:20, :20, :20]
    ball = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 6**2
    f = shape_features(ball)
    assert f["volume"] == ball.sum() and 0.85 < f["sphericity"] <= 1.05 and f["solidity"] > 0.85
    assert f["axis_major_length"] == pytest.approx(f["axis_minor_length"], rel=0.02)
    table = handcrafted_profiles(crops, STAINS)
    assert len(table) == len(crops) and {"volume", "DNA_mean", "Mito_p90", "ER_gradient"} <= set(table.columns)
    assert table["volume"].gt(0).all()


def test_cli_train_vae_then_profile_with_metrics(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "data"), "--fields", "8", "--cells", "6", "--seed", "4",
                 "--sites-per-well", "1"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert main(["train", manifest, "--out", str(tmp_path / "run"), "--objective", "vae", "--epochs", "2",
                 "--width", "4", "--latent-dim", "5", "--batch-size", "8", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["objective"] == "vae" and summary["epochs_run"] == 2 and summary["target_layer"] == "encoder.stage1"
    checkpoint = str(tmp_path / "run" / "model.safetensors")
    assert main(["profile", manifest, "--model", checkpoint, "--out", str(tmp_path / "p"), "--device", "cpu",
                 "--no-umap", "--metrics", "--cache", str(tmp_path / "run" / "crops")]) == 0
    summary = json.loads(capsys.readouterr().out)
    cells = pd.read_parquet(tmp_path / "p" / "cells.parquet")
    assert len([c for c in cells.columns if c.startswith("f_")]) == 5  # the latent means
    assert cells["local_quality"].between(0, 1).all()
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    for key in ("trustworthiness", "continuity", "lcmc", "knn_accuracy", "linear_accuracy", "replicate_map"):
        assert metrics[key] is not None, key
    assert summary["metrics"]["cells"] == len(cells)
    # a second --metrics run into the same folder is refused, not overwritten
    assert main(["profile", manifest, "--model", checkpoint, "--out", str(tmp_path / "p"), "--metrics"]) == 2
    assert main(["train", manifest, "--out", str(tmp_path / "run"), "--objective", "vae", "--mi-weight", "1"]) == 2
