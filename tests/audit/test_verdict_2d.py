"""The verdict and the one-pass layer sweep on 2D models: a 2D model whose cue is known by construction
(a spot read inside the cell, or beside it in the medium) is judged right through the Python API and
``gradcamo audit``; on a small 2D CNN every layer of the sweep (plane by plane too, masked and resampled
crops too) gives the single-layer audit's scores and occlusion drops at that layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from analytic_models import SpotReader2D
from napari_gradcamo.audit.layer_sweep import MultiLayerCam, candidate_layers, run_sweep
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.audit.verdict import LOOKS_AT_CELLS, LOOKS_ELSEWHERE, NOT_ASSESSABLE, judge, judge_fields
from napari_gradcamo.io.images import Image, make_image
from napari_gradcamo.models.backbones import small_cnn
from napari_gradcamo.models.checkpoint import save_checkpoint
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata

CLASSES = ["control", "treated"]
FACTORY = "analytic_models:spot_reader_2d"
CORNERS = [(6 + 24 * r, 6 + 24 * c) for r in range(3) for c in range(3)]  # 9 cells of 10×10, 24 px apart


def spot_field(where: str, spots: int, source: str = "f") -> tuple[Image, np.ndarray]:
    """One plane, 9 square cells; the first ``spots`` cells have a bright spot inside them (``"cell"``) or
    beside them in the medium (``"medium"``), within the cell's 24×24 crop and in no other cell's."""
    labels = np.zeros((1, 72, 72), np.uint32)
    data = np.zeros((2, 1, 72, 72), np.float32)
    for k, (y, x) in enumerate(CORNERS, start=1):
        labels[:, y:y + 10, x:x + 10] = k
        if k <= spots:
            sy, sx = (y + 4, x + 4) if where == "cell" else (y + 12, x + 12)
            data[0, :, sy:sy + 2, sx:sx + 2] = 1.0
    data[1] = labels > 0
    return Image(data, ["spot", "stain"], (1.0, 1.0, 1.0), source=source), labels


def spot_bundle(where: str) -> ModelBundle:
    meta = ModelMetadata("custom", CLASSES, ["spot", "stain"], [1, 24, 24], normalization={"method": "none"},
                         architecture_kwargs={"factory": FACTORY, "where": where})
    return ModelBundle(SpotReader2D(where).eval(), meta, f"spot-2d-{where}")


@pytest.mark.parametrize("where, expected", [("cell", LOOKS_AT_CELLS), ("medium", LOOKS_ELSEWHERE)])
def test_verdict_on_2d_models_whose_cue_is_known(where, expected):
    fields = [spot_field(where, 9 if i % 2 else 0, f"f{i}") for i in range(4)]
    truth = [[CLASSES[i % 2]] for i in range(4)]
    report = judge_fields(spot_bundle(where), fields, true_classes=truth, sample=24, seed=0)
    assert report.informative
    assert report.classes["treated"].verdict == expected, report.classes["treated"]
    control = report.classes["control"]  # recognised by the spot's absence: nothing to hide
    assert control.verdict == NOT_ASSESSABLE and "what is missing" in control.reason
    assert report.verdict == expected
    assert len(report.cells) == 24 and report.layer == "features"
    treated = report.cells[report.cells["target_class"] == "treated"]
    if where == "cell":  # hiding the cell hides the spot: p(treated) from ~1 to ~0
        assert (treated["drop_cell_occluded"] > 0.9).all() and (treated["drop_context_occluded"].abs() < 0.1).all()
    else:
        assert (treated["drop_context_occluded"] > 0.9).all() and (treated["drop_cell_occluded"].abs() < 0.1).all()


def test_2d_verdict_through_the_cli(tmp_path, capsys):
    from napari_gradcamo.cli import main

    for where, expected in (("cell", LOOKS_AT_CELLS), ("medium", LOOKS_ELSEWHERE)):
        image, labels = spot_field(where, spots=6)
        folder = tmp_path / where
        folder.mkdir()
        tifffile.imwrite(folder / "field.ome.tif", image.data.transpose(1, 0, 2, 3), ome=True,
                         metadata={"axes": "ZCYX", "Channel": {"Name": image.channel_names},
                                   "PhysicalSizeZ": 1.0, "PhysicalSizeY": 1.0, "PhysicalSizeX": 1.0})
        tifffile.imwrite(folder / "masks.tif", labels)
        model = save_checkpoint(folder / "spot.safetensors", SpotReader2D(where), spot_bundle(where).metadata)
        code = main(["audit", str(folder / "field.ome.tif"), "--model", str(model), "--masks",
                     str(folder / "masks.tif"), "--out", str(folder / "out"), "--trust-factory", FACTORY,
                     "--verdict-sample", "9"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert f"gradcamo: verdict: {expected}" in captured.err
        summary = json.loads(next((folder / "out").glob("*_summary.json")).read_text())
        verdict = summary["verdict"]
        assert verdict["verdict"] == expected and verdict["cells"] == 9 and verdict["layer"] == "features"
        assert verdict["classes"]["treated"]["verdict"] == expected and verdict["classes"]["treated"]["cells"] == 6
        assert verdict["classes"]["control"]["verdict"] == NOT_ASSESSABLE  # 3 cells: fewer than MIN_CELLS


# --------------------------------------------------------------------------- the sweep equals the audit


def cnn_bundle(outputs: int = 2, **meta) -> ModelBundle:
    torch.manual_seed(3)
    model = small_cnn(2, outputs, width=4, dims=2).eval()
    return ModelBundle(model, ModelMetadata("small-cnn-2d", ["a", "b"], ["c0", "c1"], [1, 16, 16],
                                            architecture_kwargs={"width": 4}, **meta))


def cnn_field(z: int, voxel=(1.0, 1.0, 1.0)):
    rng = np.random.default_rng(1)
    labels = np.zeros((z, 48, 48), np.int32)
    labels[:, 10:20, 10:20] = 1
    labels[:, 28:40, 26:38] = 2
    labels[:, 2:9, 34:44] = 3
    data = rng.random((2, z, 48, 48)).astype(np.float32) + 2.0 * (labels > 0)[None]
    return make_image(data, "CZYX", ["c0", "c1"], voxel), labels


COMPARED = ["probability", "gradcamo", "normalised", "lift", "neighbour_share", "drop_cell_occluded",
            "drop_context_occluded"]


@pytest.mark.parametrize("case", ["one plane", "plane by plane", "masked and resampled", "one-logit head"])
def test_2d_sweep_equals_the_single_layer_audit_at_every_layer(case):
    if case == "one plane":
        (image, labels), bundle, settings = cnn_field(1), cnn_bundle(), {}
    elif case == "plane by plane":
        (image, labels), bundle, settings = cnn_field(5), cnn_bundle(), {"planes": 3, "target_class": "b"}
    elif case == "one-logit head":  # ±z explained per plane, both classes
        (image, labels), bundle, settings = cnn_field(3), cnn_bundle(1, head="sigmoid-binary"), {"planes": 2}
    else:
        image, labels = cnn_field(1, voxel=(1.0, 0.25, 0.25))
        bundle, settings = cnn_bundle(voxel_size=[1.0, 0.5, 0.5], crop_mode="masked", padding_value=-3.0), {}
    layers = candidate_layers(bundle.model, bundle.metadata.crop_shape, 2)
    assert layers == ["stage1", "stage2", "stage3"]
    swept = run_sweep(image, labels, bundle, None, AuditSettings(occlusion=True, **settings))
    assert list(swept) == layers
    for layer in layers:
        single = run_audit(image, labels, bundle, AuditSettings(occlusion=True, target_layer=layer, **settings)).table
        table = swept[layer]
        assert list(table["label"]) == list(single["label"]) == [1, 2, 3]
        assert (table["target_layer"] == layer).all() and (table["predicted_class"] == single["predicted_class"]).all()
        assert (table["target_class"] == single["target_class"]).all()
        for column in COMPARED:
            np.testing.assert_allclose(table[column], single[column], atol=1e-5, err_msg=f"{case}, {layer}, {column}")
        assert np.isfinite(table[COMPARED].to_numpy(np.float64)).all()
        # the layers differ from each other: a sweep that read one layer for all would fail here
    assert not np.allclose(swept["stage1"]["gradcamo"], swept["stage3"]["gradcamo"], atol=1e-3)


def test_2d_verdict_cells_are_the_audits_scores():
    image, labels = cnn_field(1)
    bundle = cnn_bundle()
    report = judge(image, labels, bundle)
    assert set(report.layer_agreement) == {"stage1", "stage2", "stage3"} and len(report.cells) == 3
    for layer in ("stage1", "stage2", "stage3"):
        single = run_audit(image, labels, bundle, AuditSettings(occlusion=True, target_layer=layer)).table
        np.testing.assert_allclose(report.cells[f"normalised@{layer}"], single["normalised"], atol=1e-5)
    np.testing.assert_allclose(report.cells["drop_cell_background_fill"], single["drop_cell_occluded"], atol=1e-5)


def test_2d_sweep_refuses_perturbation_methods_with_the_fix():
    with pytest.raises(ValueError, match="perturbs the input once per layer.*--layer"):
        MultiLayerCam(cnn_bundle().model, ["stage1"], "cpu", method="scorecam")


def test_2d_sweep_equals_the_audit_on_torchvision_resnet18():
    """The 2D family used on BBBC022-like data: in-place ReLUs after hooked layers, eight candidate layers."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    meta = ModelMetadata("custom", ["a", "b"], ["c0", "c1", "c2"], [1, 64, 64],
                         architecture_kwargs={"factory": "torchvision.models:resnet18", "num_classes": 2})
    bundle = ModelBundle(model, meta)
    rng = np.random.default_rng(1)
    labels = np.zeros((1, 128, 128), np.int32)
    labels[:, 20:40, 20:40] = 1
    labels[:, 70:100, 60:90] = 2
    image = make_image(rng.random((3, 1, 128, 128)).astype(np.float32) + 2.0 * (labels > 0)[None], "CZYX",
                       ["c0", "c1", "c2"], (1.0, 1.0, 1.0))
    swept = run_sweep(image, labels, bundle, None, AuditSettings(occlusion=True))
    assert list(swept) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    for layer, table in swept.items():
        single = run_audit(image, labels, bundle, AuditSettings(occlusion=True, target_layer=layer)).table
        for column in COMPARED:
            np.testing.assert_allclose(table[column], single[column], atol=1e-5, err_msg=f"{layer}, {column}")
