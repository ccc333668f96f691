"""Lazy reading: OME-Zarr and TIFF fields as dask arrays whose crops equal the eager reader's."""

import dask.array as da
import numpy as np
import pytest

from napari_gradcamo.crops.extract import window
from napari_gradcamo.io.images import ImageError, read_image
from napari_gradcamo.io.lazy import open_image, open_labels
from napari_gradcamo.io.ome_zarr import open_group, read_plate, write_image
from napari_gradcamo.plate.synthetic import write_synthetic_plate


def test_tiff_opened_lazily_gives_the_eager_readers_pixels_and_windows(tmp_path):
    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    write_synthetic_manifest(tmp_path, n_fields=1)
    path = next((tmp_path / "images").glob("*.ome.tif"))
    lazy, eager = open_image(path), read_image(path)
    assert isinstance(lazy.data, da.Array) and lazy.data.shape == eager.data.shape
    assert lazy.channel_names == eager.channel_names and lazy.voxel_size == eager.voxel_size
    for origin in [(0, 10, 10), (-3, -5, 50), (6, 40, -8)]:  # inside, and past the borders (zero padding)
        crop, padding = window(lazy.data, origin, (8, 32, 32))
        expected, expected_padding = window(eager.data, origin, (8, 32, 32))
        assert padding == expected_padding
        np.testing.assert_array_equal(crop.astype(np.float32), expected)


def test_ome_zarr_plate_fields_open_lazily_with_metadata_and_labels(tmp_path):
    source, _ = write_synthetic_plate(tmp_path, 2, sites_per_well=2, chunks=(1, 4, 32, 32))
    name, fields = read_plate(source)
    assert name == "SYN01" and [(f.well, f.site) for f in fields] == [("B02", 1), ("B02", 2)]
    image = open_image(fields[1].path)
    assert isinstance(image.data, da.Array) and image.data.chunksize == (1, 4, 32, 32)
    assert image.channel_names == ["DNA", "ER", "RNA", "AGP", "Mito"] and image.voxel_size == (2.0, 1.5, 1.5)
    labels = open_labels(fields[1].path)
    assert labels.shape == image.spatial_shape and labels.max() > 0
    with pytest.raises(ImageError, match="HCS plate"):
        open_image(source)
    with pytest.raises(ImageError, match="do not describe"):
        open_image(fields[0].path, axes="ZYX")


def test_ome_zarr_without_multiscales_or_labels_is_refused_with_the_fix(tmp_path):
    group = open_group(tmp_path / "x.zarr", mode="w")
    group.create_group("plain")
    with pytest.raises(ImageError, match="multiscales"):
        open_image(tmp_path / "x.zarr" / "plain")
    write_image(group, "img", np.ones((1, 2, 8, 8), np.uint16), ["DNA"], (1, 1, 1))
    with pytest.raises(ImageError, match="no 'labels' group"):
        open_labels(tmp_path / "x.zarr" / "img")


def test_gradcamo_audit_reads_an_ome_zarr_field_lazily_with_its_own_labels(tmp_path):
    """The single-field CLI audits an OME-Zarr field (its label image used as masks) exactly as the same
    field read eagerly from arrays."""
    import pandas as pd

    from napari_gradcamo.audit.run import AuditSettings, run_audit
    from napari_gradcamo.cli import main
    from napari_gradcamo.models.bundled import bundled_model_path, load_demo_model

    source, _ = write_synthetic_plate(tmp_path, 1, sites_per_well=1, chunks=(1, 4, 32, 32))
    field = read_plate(source)[1][0].path
    assert main(["audit", str(field), "--model", str(bundled_model_path("honest")), "--out", str(tmp_path / "r")]) == 0
    table = pd.read_parquet(next((tmp_path / "r").glob("*.parquet"))).sort_values("label", ignore_index=True)
    image = open_image(field)
    image.data = np.asarray(image.data)
    eager = run_audit(image, open_labels(field), load_demo_model("honest"), AuditSettings()).table
    assert len(table) == len(eager) > 0
    np.testing.assert_allclose(table["gradcamo"], eager["gradcamo"], rtol=1e-5)
    assert not any((tmp_path / "r").glob("*_masks.tif"))  # its own labels were used, nothing segmented
