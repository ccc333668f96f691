"""The NGFF 0.5 this package writes, validated by ome-zarr-models (a pydantic model of the spec).

ome-zarr-models >= 1.0 needs pydantic >= 2.11.5, which the main environment cannot have (bioimageio pins
pydantic < 2.11, see pyproject.toml), so it runs in the second test environment, ``.venv-cp4`` (no napari, no
bioimageio; ``[test-cellpose4]`` installs ome-zarr-models): ``make test-cellpose4``, part of ``make test``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

ome_zarr_models = pytest.importorskip("ome_zarr_models")

import zarr  # noqa: E402

from napari_gradcamo.io.ome_zarr import write_plate  # noqa: E402


def test_written_plates_validate_as_ngff_0_5(tmp_path):
    from ome_zarr_models.v05.hcs import HCS
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    labels = np.zeros((2, 16, 16), np.uint16)
    labels[:, 2:6, 2:6] = 1
    path = write_plate(tmp_path / "p.zarr", "P", [
        {"row": "B", "column": "02", "image": np.ones((2, 2, 16, 16), np.uint16), "channel_names": ["DNA", "RNA"],
         "voxel_size": (1, .5, .5), "labels": labels}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ValidationWarning (a field the spec expects) fails the test too
        hcs = HCS.from_zarr(zarr.open_group(str(path), mode="r"))
        image = Image.from_zarr(zarr.open_group(str(path / "B/02/0"), mode="r"))
        ImageLabel.from_zarr(zarr.open_group(str(path / "B/02/0/labels/cells"), mode="r"))
        Labels.from_zarr(zarr.open_group(str(path / "B/02/0/labels"), mode="r"))
    assert [w.path for w in hcs.ome_attributes.plate.wells] == ["B/02"]
    assert [a.name for a in image.ome_attributes.multiscales[0].axes] == ["c", "z", "y", "x"]
