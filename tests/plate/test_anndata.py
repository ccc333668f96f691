"""The plate table as AnnData: written by ``gradcamo plate report`` (pandas 3's string columns included, no
anndata setting changed) and read back equal, with every score and measurement in X and nothing numeric about a
cell's attention left in obs."""

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.output import results
from napari_gradcamo.plate import store
from napari_gradcamo.plate.sources import FieldTask

anndata = pytest.importorskip("anndata")


def _run_folder(tmp_path):
    out = tmp_path / "out"
    rng = np.random.default_rng(3)
    settings = AuditSettings(flag_on="lift", threshold=1.2)
    for i, well in enumerate(["A01", "A02", "B01"]):
        task = FieldTask("P1", well, 1, "field.tif", "", ["control", "treated"][i % 2], ["0.5", "1"][i % 2])
        n = 7
        gradcamo, chance = rng.uniform(0, 1, n), rng.uniform(0.05, 0.3, n)
        gradcamo[0] = np.nan
        table = results.conform(pd.DataFrame({
            "label": np.arange(1, n + 1), "centroid_z": rng.uniform(0, 9, n), "centroid_y": rng.uniform(0, 60, n),
            "centroid_x": rng.uniform(0, 60, n), "volume_voxels": rng.integers(50, 500, n),
            "predicted_class": "control", "probability": rng.uniform(0.5, 1, n), "prob_control": rng.uniform(0, 1, n),
            "prob_treated": rng.uniform(0, 1, n), "target_class": "control", "gradcamo": gradcamo, "chance": chance,
            "lift": gradcamo / chance, "normalised": (gradcamo - chance) / (1 - chance),
            "neighbour_share": rng.uniform(0, 0.2, n), "reason": ["empty map"] + [""] * (n - 1),
            "status": results.STATUS_AUDITED, "cam_method": "gradcam", "target_layer": "features.3"}),
            ["control", "treated"])
        table = results.apply_threshold(table, settings.threshold, on=settings.flag_on).assign(**task.metadata())
        store.write_field(out, task, "f", "run", table, [])
    store.write_run(out, {"fingerprint": "run", "checkpoint": "model.pt", "source": "plate.csv",
                          "settings": asdict(settings), "fields": 3})
    return out


def test_plate_report_writes_an_h5ad_that_reads_back_with_every_score_in_x(tmp_path):
    out = _run_folder(tmp_path)
    # the CLI, in a fresh process, as a user runs it (pandas 3 string columns, anndata's settings untouched)
    done = subprocess.run([sys.executable, "-c", "import sys; from napari_gradcamo.cli import main; sys.exit(main())",
                           "plate", "report", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = out / store.PLATE_ANNDATA
    assert path.is_file()
    adata = anndata.read_h5ad(path)
    table = pd.read_parquet(out / store.PLATE_TABLE).sort_values(["field", "label"], ignore_index=True)
    order = pd.Index([f"{f}/{lab}" for f, lab in zip(table["field"], table["label"])])
    adata = adata[order.tolist()]
    assert adata.n_obs == 21

    scores = ["gradcamo", "chance", "lift", "normalised", "neighbour_share", "background_share", "outside_share"]
    assert set(scores + ["prob_control", "prob_treated", "probability"]) <= set(adata.var_names)
    assert not {*scores, "prob_control", "probability"} & set(adata.obs.columns), "scores all in X, none in obs"
    assert list(adata.var.loc[scores, "kind"]) == ["score"] * 4 + ["share"] * 3
    for column in adata.var_names:
        np.testing.assert_allclose(np.asarray(adata[:, column].X).ravel(), table[column].to_numpy(np.float32),
                                   equal_nan=True, err_msg=column)
    np.testing.assert_allclose(adata.obsm["centroid_zyx"], table[["centroid_z", "centroid_y", "centroid_x"]])
    for column in ("plate", "well", "treatment", "dose", "reason", "target_layer", "field"):
        assert list(adata.obs[column].astype(str)) == list(table[column].astype(str)), column
    assert adata.obs["flagged"].to_numpy().tolist() == table["flagged"].tolist()
    assert adata.obs["label"].to_numpy().tolist() == table["label"].tolist()
    run = json.loads(adata.uns["napari_gradcamo"]["run"])
    assert run["settings"]["flag_on"] == "lift" and run["fingerprint"] == "run"
    assert "share of attention on the cell" in json.loads(adata.uns["napari_gradcamo"]["columns"])["gradcamo"]
    assert anndata.settings.allow_write_nullable_strings in (False, None)  # no global setting was needed
    import h5py

    with h5py.File(path, "r") as handle:  # the classic encoding every anndata version (and R / Julia) reads
        assert handle["obs/well"].attrs["encoding-type"] == "string-array"
        assert handle["obs/_index"].attrs["encoding-type"] == "string-array"
