"""export_flagged checks crop_shape before allocating: (10000,)*3 was an 18.2 TiB MemoryError."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.io.images import Image
from napari_gradcamo.output.export import export_flagged


def _field():
    labels = np.zeros((4, 16, 16), np.int32)
    labels[1:3, 4:9, 4:9] = 1
    image = Image(np.ones((2, 4, 16, 16), np.float32), ["DNA", "RNA"], (1.0, 1.0, 1.0))
    table = pd.DataFrame({"label": [1], "flagged": [True], "centroid_z": [2.0], "centroid_y": [6.0],
                          "centroid_x": [6.0], "gradcamo": [0.1]})
    return image, labels, table


def test_a_huge_crop_shape_is_refused_before_allocating_or_writing(tmp_path):
    image, labels, table = _field()
    with pytest.raises(ValueError, match=r"A crop of 10000×10000×10000 voxels needs .* TiB but this machine has"):
        export_flagged(tmp_path / "out", image, labels, table, crop_shape=(10000,) * 3)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [(8, 8), (0, 8, 8), (8.5, 8, 8), "888", (True, 8, 8)])
def test_a_malformed_crop_shape_names_what_it_must_be(tmp_path, bad):
    image, labels, table = _field()
    with pytest.raises(ValueError, match="must be three whole numbers z, y, x"):
        export_flagged(tmp_path / "out", image, labels, table, crop_shape=bad)


def test_a_sensible_crop_shape_exports(tmp_path):
    image, labels, table = _field()
    result = export_flagged(tmp_path / "out", image, labels, table, crop_shape=(2, 8, 8), gallery=False)
    assert list(result.cell_files) == [1] and result.cell_files[1].is_file()
