"""One head path everywhere: audit, sweep, occlusion and the sanity check turn a model's outputs into
probabilities and explained scalars the same way (models/heads.py). Each test reproduces a bug first seen
with a one-logit (sigmoid-binary) model, which the sweep, the occlusion and the sanity check treated as softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gradcamo.audit.layer_sweep import candidate_layers, run_sweep
from napari_gradcamo.audit.occlusion import background_levels, occluded_copies
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.audit.sanity import check_image
from napari_gradcamo.crops.extract import cell_table, extract_crop
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.checkpoint import normalize_crops
from napari_gradcamo.models.layers import LayerError, check_target_layer, list_target_layers
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.synthetic.generator import STAINS, generate_field

CROP = [8, 32, 32]


def binary_bundle(bias: float | None = None, seed: int = 0) -> ModelBundle:
    meta = ModelMetadata("small-cnn-3d", ["ctrl", "treated"], list(STAINS), CROP, architecture_kwargs={"width": 4},
                         head="sigmoid-binary", target_layer="stage1")
    torch.manual_seed(seed)
    model = build_model(meta).eval()
    if bias is not None:
        with torch.no_grad():
            model.head.weight.mul_(0.01)
            model.head.bias.fill_(bias)
    return ModelBundle(model, meta, "binary")


@pytest.fixture(scope="module")
def field():
    return generate_field(4, shape=(12, 64, 64), n_cells=6, treatment=1, voxel_size=(2.0, 1.5, 1.5))


def test_sweep_matches_the_audit_on_a_one_logit_model(field):
    """Bug: the sweep applied softmax to the single logit: every cell 'ctrl' with probability 1.0, the
    treated probability NaN, and negative-class cells explained with the wrong sign."""
    bundle = binary_bundle()
    audit = run_audit(field.image, field.labels, bundle, AuditSettings(target_layer="stage1")).table
    sweep = run_sweep(field.image, field.labels, bundle, ["stage1"])["stage1"]
    assert len(audit) == len(sweep) > 0
    assert list(sweep["predicted_class"]) == list(audit["predicted_class"])
    assert np.isfinite(sweep["prob_treated"]).all()
    np.testing.assert_allclose(sweep["prob_treated"], audit["prob_treated"], rtol=1e-5)
    np.testing.assert_allclose(sweep["gradcamo"], audit["gradcamo"], rtol=1e-4, atol=1e-6)
    # both classes explained: with the class fixed to each, the maps are ±z's, the same as the audit's
    for cls in ("ctrl", "treated"):
        a = run_audit(field.image, field.labels, bundle, AuditSettings(target_layer="stage1", target_class=cls)).table
        s = run_sweep(field.image, field.labels, bundle, ["stage1"], AuditSettings(target_class=cls))["stage1"]
        np.testing.assert_allclose(s["gradcamo"], a["gradcamo"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["layercam", "hirescam", "gradcam++"])
def test_sweep_computes_the_method_it_names(field, method):
    """Bug: ``sweep --method layercam`` computed Grad-CAM and labelled the table layercam."""
    bundle = binary_bundle()
    sweep = run_sweep(field.image, field.labels, bundle, ["stage2"], AuditSettings(method=method))["stage2"]
    audit = run_audit(field.image, field.labels, bundle, AuditSettings(method=method, target_layer="stage2")).table
    gradcam = run_sweep(field.image, field.labels, bundle, ["stage2"])["stage2"]
    np.testing.assert_allclose(sweep["gradcamo"], audit["gradcamo"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(sweep["gradcamo"], gradcam["gradcamo"])
    assert set(sweep["cam_method"]) == {method}


def _independent_drops(bundle, field, table):
    """Occlusion drops recomputed here from the model's own logit: σ(z) for 'treated', 1 − σ(z) for 'ctrl'."""
    meta = bundle.metadata
    cells = {c.label: c for c in cell_table(field.labels)}
    crops = [extract_crop(field.image, field.labels, cells[int(l)], CROP) for l in table["label"]]
    images = np.stack([c.image for c in crops])
    cell, other = np.stack([c.cell_mask for c in crops]), np.stack([c.other_mask for c in crops])
    inside = np.stack([np.ones(CROP, bool) for _ in crops])
    for i, c in enumerate(crops):
        if c.padding is not None:
            inside[i] = False
            inside[i][tuple(slice(b, s - a) for s, (b, a) in zip(CROP, c.padding))] = True
    hide_cell, hide_context = occluded_copies(images, cell, background_levels(images, cell, other, inside))

    def p_target(x):
        with torch.no_grad():
            z = bundle.model(torch.as_tensor(normalize_crops(x, meta.normalization)))[:, 0].double().numpy()
        p = 1.0 / (1.0 + np.exp(-z))
        return np.where(table["target_class"].to_numpy() == "treated", p, 1.0 - p)

    base = p_target(images)
    return base - p_target(hide_cell), base - p_target(hide_context)


@pytest.mark.parametrize("bias", [None, -30.0])
def test_occlusion_on_a_one_logit_model(field, bias):
    """Bugs: IndexError on a sigmoid-binary model; on a field predicted all negative, drops equal to p − 1."""
    bundle = binary_bundle(bias)
    table = run_audit(field.image, field.labels, bundle, AuditSettings(target_layer="stage1", occlusion=True)).table
    drop_cell, drop_context = _independent_drops(bundle, field, table)
    np.testing.assert_allclose(table["drop_cell_occluded"], drop_cell, atol=1e-5)
    np.testing.assert_allclose(table["drop_context_occluded"], drop_context, atol=1e-5)
    if bias is not None:  # saturated at 'ctrl': nothing the occlusion hides changes the answer
        assert set(table["predicted_class"]) == {"ctrl"}
        assert np.abs(table[["drop_cell_occluded", "drop_context_occluded"]].to_numpy()).max() < 1e-6
    sweep = run_sweep(field.image, field.labels, bundle, ["stage1"], AuditSettings(occlusion=True))["stage1"]
    np.testing.assert_allclose(sweep["drop_cell_occluded"], table["drop_cell_occluded"], atol=1e-5)
    np.testing.assert_allclose(sweep["drop_context_occluded"], table["drop_context_occluded"], atol=1e-5)


def test_sanity_check_explains_what_the_audit_explains(field):
    """Bug: the sanity check explained a one-logit model as softmax (class 0 by +z, the wrong sign)."""
    bundle = binary_bundle()
    audit = run_audit(field.image, field.labels, bundle, AuditSettings(target_layer="stage1")).table
    report = check_image(field.image, field.labels, bundle, AuditSettings(target_layer="stage1"))
    assert report.cells == len(audit)
    assert report.median_gradcamo == pytest.approx(float(np.nanmedian(audit["gradcamo"])), rel=1e-4)


def test_single_voxel_layers_are_not_target_layers():
    """Bug: a global pool (1×1×1 map) was accepted: Grad-CAMO = chance for every cell, 'flagged' by rounding."""
    bundle = binary_bundle()
    with pytest.raises(LayerError, match="single-voxel feature map"):
        check_target_layer(bundle.model, "pool", CROP, len(STAINS))
    assert "pool" not in [l.name for l in list_target_layers(bundle.model, CROP, len(STAINS))]
    assert candidate_layers(bundle.model, CROP, len(STAINS)) == ["stage1", "stage2", "stage3"]


def test_efficientnet_candidates_come_from_inside_its_block_container():
    """EfficientNet's top level has ``_blocks`` (a container with a 1×1×1 output): its stages are the candidates."""
    meta = ModelMetadata("efficientnet-b0", ["a", "b"], list(STAINS), CROP)
    layers = candidate_layers(build_model(meta), CROP, len(STAINS))
    assert "_blocks.1" in layers and "_blocks" not in layers
    assert all("._" not in name for name in layers)  # never inside one block
