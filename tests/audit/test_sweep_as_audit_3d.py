"""The one-pass layer sweep (and so the verdict) cuts and feeds a 3D model's cells as the single-layer audit
does: the model's crop in µm when the image's voxel size differs from the checkpoint's (resampled to the
model's crop), and masked to the cell when the checkpoint was trained on masked crops. Before, the 3D sweep
cut the checkpoint's crop in image voxels and never masked, so its scores differed from the audit's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gradcamo.audit.layer_sweep import candidate_layers, run_sweep
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.io.images import make_image
from napari_gradcamo.models.backbones import small_cnn
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata

COMPARED = ["probability", "gradcamo", "normalised", "lift", "neighbour_share", "drop_cell_occluded",
            "drop_context_occluded"]


def cnn3d_bundle(**meta) -> ModelBundle:
    torch.manual_seed(5)
    model = small_cnn(2, 2, width=4, dims=3).eval()
    return ModelBundle(model, ModelMetadata("small-cnn-3d", ["a", "b"], ["c0", "c1"], [8, 16, 16],
                                            architecture_kwargs={"width": 4}, **meta))


def field3d(voxel):
    rng = np.random.default_rng(2)
    labels = np.zeros((12, 48, 48), np.int32)
    labels[3:9, 10:20, 10:20] = 1
    labels[2:10, 28:40, 26:38] = 2
    labels[4:8, 2:9, 34:44] = 3
    data = rng.random((2, 12, 48, 48)).astype(np.float32) + 2.0 * (labels > 0)[None]
    return make_image(data, "CZYX", ["c0", "c1"], voxel), labels


@pytest.mark.parametrize("case", ["resampled", "masked", "masked and resampled"])
def test_3d_sweep_equals_the_single_layer_audit_at_every_layer(case):
    meta = {"voxel_size": [1.0, 0.5, 0.5]}
    if "masked" in case:
        meta.update(crop_mode="masked", padding_value=-3.0)
    image, labels = field3d((1.0, 0.25, 0.25) if "resampled" in case else (1.0, 0.5, 0.5))
    bundle = cnn3d_bundle(**meta)
    layers = candidate_layers(bundle.model, bundle.metadata.crop_shape, 2)
    assert len(layers) >= 2
    swept = run_sweep(image, labels, bundle, layers, AuditSettings(occlusion=True))
    for layer in layers:
        single = run_audit(image, labels, bundle, AuditSettings(occlusion=True, target_layer=layer)).table
        table = swept[layer]
        assert list(table["label"]) == list(single["label"]) == [1, 2, 3]
        assert (table["predicted_class"] == single["predicted_class"]).all()
        for column in COMPARED:
            np.testing.assert_allclose(table[column], single[column], atol=1e-5, err_msg=f"{case}, {layer}, {column}")
