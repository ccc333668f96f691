"""``gradcamo sweep`` / ``plate run`` with a lab's own architecture (--trust-factory), ``sweep --occlusion``,
single-voxel target layers refused with exit 2, and a DataParallel state dict loaded with a warning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from bad_inputs_common import assert_refused, run
from napari_gradcamo.cli import main
from napari_gradcamo.models.checkpoint import load_checkpoint, save_checkpoint
from napari_gradcamo.models.metadata import ModelMetadata
from napari_gradcamo.synthetic.generator import STAINS, generate_field

FACTORY = "analytic_models:channel_mean_classifier"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from analytic_models import channel_mean_classifier

    folder = tmp_path_factory.mktemp("sweep")
    field = generate_field(2, shape=(12, 64, 64), n_cells=5, treatment=1, voxel_size=(2.0, 1.5, 1.5))
    np.save(folder / "field.npy", field.image.data)
    np.save(folder / "masks.npy", field.labels)
    meta = ModelMetadata("custom", ["on", "off"], list(STAINS), [8, 32, 32], architecture_kwargs={"factory": FACTORY})
    ckpt = save_checkpoint(folder / "lab.safetensors", channel_mean_classifier(len(STAINS), 2), meta)
    torch.manual_seed(0)
    small = ModelMetadata("small-cnn-3d", ["ctrl", "treated"], list(STAINS), [8, 32, 32],
                          architecture_kwargs={"width": 4})
    from napari_gradcamo.models.architectures import build_model

    cnn = save_checkpoint(folder / "cnn.safetensors", build_model(small).eval(), small)
    return {"image": folder / "field.npy", "masks": folder / "masks.npy", "custom": ckpt, "cnn": cnn, "folder": folder}


def sweep_args(files, model, out, *extra):
    return ["sweep", files["image"], "--axes", "CZYX", "--channel-names", ",".join(STAINS), "--model", model,
            "--masks", files["masks"], "--out", out, *extra]


def test_sweep_trusts_a_factory_by_name(files, tmp_path, capsys):
    """Bug: ``gradcamo sweep`` had no --trust-factory, so a lab's own architecture could not be swept."""
    code, err = run(sweep_args(files, files["custom"], tmp_path / "refused"), capsys)
    assert_refused(code, err, f"--trust-factory {FACTORY}")
    assert main([str(a) for a in sweep_args(files, files["custom"], tmp_path / "ok", "--trust-factory", FACTORY)]) == 0
    table = pd.read_csv(next((tmp_path / "ok").glob("*_features_gradcamo.csv")))
    assert len(table) == 5 and table["gradcamo"].notna().all()


def test_sweep_occlusion_fills_the_columns(files, tmp_path, capsys):
    """Bug: ``sweep --occlusion`` was accepted and filled no occlusion column."""
    assert main([str(a) for a in sweep_args(files, files["cnn"], tmp_path, "--occlusion", "--layers", "stage1,stage2")]) == 0
    one, two = (pd.read_csv(next(tmp_path.glob(f"*_{n}_gradcamo.csv"))) for n in ("stage1", "stage2"))
    assert one["drop_cell_occluded"].notna().all() and one["drop_context_occluded"].notna().all()
    np.testing.assert_allclose(one["drop_cell_occluded"], two["drop_cell_occluded"])  # the same per cell at every layer


@pytest.mark.parametrize("command", ["audit", "sweep"])
def test_a_single_voxel_layer_is_refused(files, tmp_path, capsys, command):
    """Bug: ``--layer pool`` (a global pool, 1×1×1) was accepted: every cell scored chance."""
    if command == "audit":
        argv = ["audit", files["image"], "--axes", "CZYX", "--channel-names", ",".join(STAINS), "--model", files["cnn"],
                "--masks", files["masks"], "--out", tmp_path, "--layer", "pool"]
    else:
        argv = sweep_args(files, files["cnn"], tmp_path, "--layers", "stage1,pool")
    code, err = run(argv, capsys)
    assert_refused(code, err, "'pool'", "single-voxel feature map")


def test_plate_run_refuses_an_untrusted_factory_before_any_worker(files, tmp_path, capsys):
    code, err = run(["plate", "run", files["folder"], "--model", files["custom"], "--out", tmp_path], capsys)
    assert_refused(code, err, f"--trust-factory {FACTORY}")
    assert not (tmp_path / "run.json").exists()


def test_plate_run_audits_with_a_trusted_factory(files, tmp_path):
    from napari_gradcamo.plate.run import make_client, run_plate

    images = tmp_path / "fields"
    images.mkdir()
    data = np.load(files["image"])
    tifffile.imwrite(images / "P1_B02_s1.ome.tif", data, ome=True, metadata={"axes": "CZYX", "Channel": {"Name": list(STAINS)}})
    tifffile.imwrite(images / "P1_B02_s1_masks.tif", np.load(files["masks"]))
    client, cluster = make_client(1, processes=False)
    try:
        outcomes, _ = run_plate(images, files["custom"], tmp_path / "out", client=client, trusted_factory=FACTORY)
    finally:
        client.close()
        cluster.close()
    assert [o.status for o in outcomes] == ["done"], [o.reason for o in outcomes]


def test_a_data_parallel_state_dict_loads_with_a_warning(tmp_path, capsys):
    """Bug: keys saved from ``torch.nn.DataParallel`` (``module.…``) failed with 'Missing key(s)' and no hint."""
    from napari_gradcamo.models.architectures import build_model

    meta = ModelMetadata("small-cnn-3d", ["a", "b"], list(STAINS), [8, 32, 32], architecture_kwargs={"width": 4})
    torch.manual_seed(1)
    model = build_model(meta)
    torch.save(torch.nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")  # a real DataParallel state dict
    (tmp_path / "dp.json").write_text(meta.to_json())
    assert all(k.startswith("module.") for k in torch.load(tmp_path / "dp.pt", weights_only=True))
    with pytest.warns(UserWarning, match="DataParallel.*prefix was removed"):
        bundle = load_checkpoint(tmp_path / "dp.pt")
    for (name, a), b in zip(bundle.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.warns(UserWarning, match="DataParallel"):
        assert main(["layers", str(tmp_path / "dp.pt")]) == 0
    assert "stage1" in capsys.readouterr().out
