"""Export of flagged cells: table, OME-TIFF per cell (channels, mask, Grad-CAM, voxel size), PNG gallery."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.crops.extract import window
from napari_gradcamo.io.images import read_image
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.output.export import ExportExistsError, export_flagged


@pytest.fixture(scope="module")
def audit(plugin_field, plugin_checkpoint):
    bundle = load_checkpoint(plugin_checkpoint)
    result = run_audit(plugin_field.image, plugin_field.labels, bundle, AuditSettings(batch_size=6))
    table = labels_features.merge_rows(labels_features.init_features(plugin_field.labels), result.table, 0.5)
    # flag two cells: the lowest score by threshold, one more by hand
    low = float(table["gradcamo"].min())
    table = labels_features.reflag(table, low + 1e-6)
    other = int(table.loc[table["gradcamo"].idxmax(), "label"])
    table = labels_features.set_override(table, [other], labels_features.OVERRIDE_FLAGGED, low + 1e-6)
    return table, result.cams, bundle


def test_export_writes_table_tiffs_gallery(tmp_path, plugin_field, audit):
    table, cams, bundle = audit
    flagged = sorted(int(l) for l in table.loc[table["flagged"], "label"])
    assert len(flagged) == 2
    out = export_flagged(tmp_path / "out", plugin_field.image, plugin_field.labels, table, cams)
    assert set(out.cell_files) == set(flagged)
    assert all(p.exists() for p in out.paths)
    written = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == {p.relative_to(tmp_path / "out").as_posix() for p in out.paths}

    csv = pd.read_csv(out.table_csv)
    parquet = pd.read_parquet(out.table_parquet)
    assert len(csv) == len(parquet) == len(table)  # the whole table, flagged column included
    assert csv["flagged"].sum() == 2
    assert parquet.loc[parquet["flagged"], "crop_file"].str.startswith("cells/").all()

    crop_shape = tuple(bundle.metadata.crop_shape)
    for label in flagged:
        path = out.cell_files[label]
        image = read_image(path)  # our own OME reader: axes, channel names and voxel size from the metadata
        assert image.channel_names == [*plugin_field.image.channel_names, "mask", "gradcam"]
        assert image.voxel_size == pytest.approx(plugin_field.image.voxel_size)
        assert image.data.shape == (7, *crop_shape)
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].axes == "CZYX"
        cam = cams[label]
        pixels, _ = window(plugin_field.image.data, cam.origin, crop_shape)
        np.testing.assert_allclose(image.data[:5], pixels)
        labels_crop, _ = window(plugin_field.labels, cam.origin, crop_shape)
        np.testing.assert_array_equal(image.data[5] > 0, labels_crop == label)
        np.testing.assert_allclose(image.data[6], cam.on_crop_grid(), rtol=1e-6, atol=1e-7)
        row = parquet.set_index("label").loc[label]
        assert [row["crop_origin_z"], row["crop_origin_y"], row["crop_origin_x"]] == list(cam.origin)

    assert len(out.gallery) == 1
    from PIL import Image

    with Image.open(out.gallery[0]) as png:
        assert png.size[0] > 300 and png.size[1] > 200


def test_export_never_overwrites_unless_asked(tmp_path, plugin_field, audit):
    table, cams, _ = audit
    first = export_flagged(tmp_path, plugin_field.image, plugin_field.labels, table, cams, gallery=False)
    stamp = {p: p.stat().st_mtime_ns for p in first.paths}
    with pytest.raises(ExportExistsError, match="already exist") as info:
        export_flagged(tmp_path, plugin_field.image, plugin_field.labels, table, cams, gallery=False)
    assert set(info.value.existing) == set(first.paths)
    assert {p: p.stat().st_mtime_ns for p in first.paths} == stamp  # nothing touched
    again = export_flagged(tmp_path, plugin_field.image, plugin_field.labels, table, cams, gallery=False, overwrite=True)
    assert again.paths == first.paths


def test_export_cells_without_cam_and_all_rows(tmp_path, plugin_field, audit):
    table, cams, bundle = audit
    not_audited = labels_features.set_override(labels_features.init_features(plugin_field.labels), [1], labels_features.OVERRIDE_FLAGGED, 0.5)
    with pytest.raises(ValueError, match="crop_shape"):
        export_flagged(tmp_path / "a", plugin_field.image, plugin_field.labels, not_audited, {})
    out = export_flagged(tmp_path / "a", plugin_field.image, plugin_field.labels, not_audited, {},
                         crop_shape=bundle.metadata.crop_shape)
    assert list(out.cell_files) == [1]
    assert read_image(out.cell_files[1]).data[6].max() == 0  # no Grad-CAM: an empty map, said in the gallery
    everything = export_flagged(tmp_path / "b", plugin_field.image, plugin_field.labels, table, cams,
                                only_flagged=False, gallery=False)
    assert len(everything.cell_files) == plugin_field.n_cells


def test_export_refuses_mismatched_labels(tmp_path, plugin_field, audit):
    table, cams, _ = audit
    from napari_gradcamo.io.images import ImageError

    with pytest.raises(ImageError, match="differs"):
        export_flagged(tmp_path, plugin_field.image, plugin_field.labels[:, :10], table, cams)


def test_gallery_text_never_shows_a_score_equal_to_a_threshold_it_is_not():
    from napari_gradcamo.output.export import _fmt, _panel_text

    assert _fmt(0.146, unlike=0.15) == "0.146" and _fmt(0.1496, unlike=0.15) == "0.1496"
    assert _fmt(0.15, unlike=0.15) == "0.150" and _fmt(float("nan")) == "NaN" and _fmt(None) == "–"
    row = pd.Series({"gradcamo": 0.21, "chance": 0.08, "normalised": 0.1499, "flagged": True,
                     "predicted_class": "treated", "probability": 0.93})
    text = _panel_text(row, 7, True, ("normalised", 0.15))
    assert "normalised 0.1499 < 0.1500: flagged" in text, text
    row["normalised"] = float("nan")
    assert "normalised undefined (empty map): flagged" in _panel_text(row, 7, False, ("normalised", 0.15))
