"""gradcamo profile: per-cell features + Grad-CAMO, sphering on controls, wells, UMAP, CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.cli import main
from napari_gradcamo.crops.datasets import cropset_from_image
from napari_gradcamo.models.bundled import bundled_model_path, load_demo_model
from napari_gradcamo.profiles.extract import (
    aggregate_wells,
    default_feature_layer,
    extract_profiles,
    feature_columns,
    fit_sphering,
)


def test_profiles_have_one_row_per_cell_and_the_audits_gradcamo(plugin_field):
    bundle = load_demo_model("honest")
    data = cropset_from_image(plugin_field.image, plugin_field.labels, bundle)
    layer = default_feature_layer(bundle.model, bundle.metadata.crop_shape, 5)
    assert layer == "stage3"  # the last spatial map before global pooling
    table = extract_profiles(bundle, data, batch_size=4, device="cpu")
    assert len(table) == plugin_field.n_cells and table["label"].tolist() == list(range(1, plugin_field.n_cells + 1))
    assert len(feature_columns(table)) == 32  # stage3 of the width-8 CNN has 4×8 channels
    assert np.isfinite(table[feature_columns(table)].to_numpy()).all()
    audit = run_audit(plugin_field.image, plugin_field.labels, bundle, AuditSettings(device="cpu")).table
    merged = table.merge(audit, on="label", suffixes=("", "_audit"))
    np.testing.assert_allclose(merged["gradcamo"], merged["gradcamo_audit"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(merged["background_share"], merged["background_share_audit"], rtol=1e-4, atol=1e-6)
    assert (merged["predicted_class"] == merged["predicted_class_audit"]).all()
    # the spatially averaged layer is what the head pools: the features equal the pooled vector
    import torch

    from napari_gradcamo.models.checkpoint import normalize_crops

    with torch.no_grad():
        pooled = bundle.model.pool(bundle.model.stage3(bundle.model.stage2(bundle.model.stage1(
            torch.as_tensor(normalize_crops(data.x[:2], bundle.metadata.normalization)))))).flatten(1)
    np.testing.assert_allclose(table[feature_columns(table)].to_numpy()[:2], pooled.numpy(), rtol=1e-4, atol=1e-5)


def correlated_table(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    x = rng.normal(size=(n, d)) @ mix * np.linspace(0.1, 5, d) + 3.0
    table = pd.DataFrame(x, columns=[f"f_{k:03d}" for k in range(d)])
    table["class"] = np.where(np.arange(n) % 3 == 0, "control", "treated")
    table["plate"], table["well"] = "P1", [f"W{k % 6}" for k in range(n)]
    table["label"], table["gradcamo"] = np.arange(n), rng.uniform(size=n)
    return table


def test_sphering_whitens_the_control_cells():
    table = correlated_table()
    table["f_999"] = 1.0  # constant in the controls: dropped
    control = np.flatnonzero(table["class"] == "control")
    sph = fit_sphering(table, control)
    assert "f_999" not in sph.columns and sph.method.startswith("pycytominer")
    z = sph.transform(table)
    np.testing.assert_allclose(z[control].mean(axis=0), 0, atol=1e-8)
    np.testing.assert_allclose(np.cov(z[control], rowvar=False), np.eye(len(sph.columns)), atol=1e-4)
    assert np.abs(np.cov(z[table["class"] == "treated"], rowvar=False) - np.eye(6)).max() > 1e-3
    # ZCA (not PCA): the whitened features stay aligned with the original ones
    corr = [np.corrcoef(z[control, k], table.loc[control, f"f_{k:03d}"])[0, 1] for k in range(6)]
    assert min(corr) > 0.3


def test_rank_deficient_controls_fall_back_to_numpy_zca():
    table = correlated_table(d=4)
    table["f_004"] = table["f_000"] + table["f_001"]  # exactly collinear
    control = np.flatnonzero(table["class"] == "control")
    sph = fit_sphering(table, control)
    assert sph.method.startswith("numpy")
    assert np.isfinite(sph.transform(table)).all()


def test_well_aggregation():
    table = correlated_table()
    wells = aggregate_wells(table, ["f_000", "f_001"], "median")
    assert len(wells) == 6 and wells["n_cells"].sum() == len(table)
    w0 = table[table["well"] == "W0"]
    assert wells.loc[wells["well"] == "W0", "f_001"].item() == pytest.approx(w0["f_001"].median())
    assert wells.loc[wells["well"] == "W0", "gradcamo_median"].item() == pytest.approx(w0["gradcamo"].median())


def test_cli_profile_end_to_end(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "data"), "--fields", "4", "--cells", "8", "--seed", "6",
                 "--sites-per-well", "1"]) == 0
    manifest = json.loads(capsys.readouterr().out)["manifest"]
    assert main(["profile", manifest, "--model", str(bundled_model_path("honest")), "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cells = pd.read_parquet(tmp_path / "p" / "cells.parquet")
    assert summary["cells"] == len(cells) > 10 and summary["wells"] == 4
    assert summary["sphering_fitted_on"].startswith("control")
    for column in ("gradcamo", "chance", "umap_1", "umap_2", "well", "site", "class", "label", "f_000", "s_000"):
        assert column in cells.columns, column
    assert np.isfinite(cells[["umap_1", "umap_2"]].to_numpy()).all()
    control = cells["class"] == "control"
    s = cells[[c for c in cells.columns if c.startswith("s_")]].to_numpy()
    assert np.abs(s[control.to_numpy()].mean(axis=0)).max() < 1e-6
    assert len(pd.read_parquet(tmp_path / "p" / "wells.parquet")) == 4
    for key in ("class", "site", "gradcamo"):
        png = tmp_path / "p" / f"umap_{key}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
