"""export_flagged refuses what would export the wrong cells or write outside its folder (issue 23)."""

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.io.images import make_image
from napari_gradcamo.output import results
from napari_gradcamo.output.export import export_flagged


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    image = make_image(rng.random((1, 2, 16, 16)).astype(np.float32), "CZYX", ["DNA"])
    labels = np.zeros((2, 16, 16), np.uint16)
    labels[:, 2:6, 2:6], labels[:, 9:13, 9:13] = 1, 2
    table = results.conform(pd.DataFrame({"label": [1, 2], "centroid_z": [0.5, 0.5], "centroid_y": [3.5, 10.5],
                                          "centroid_x": [3.5, 10.5], "flagged": [False, True]}), ["a", "b"])
    return image, labels, table


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_text_flags_are_refused_not_read_as_true(tmp_path, scene):
    image, labels, table = scene
    text = table.assign(flagged=["False", "False"])  # a table read back as text: bool('False') is True
    with pytest.raises(ValueError, match="'flagged' column has dtype (str|object), not bool: text such as 'False'"):
        export_flagged(tmp_path / "out", image, labels, text, crop_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="not bool"):
        export_flagged(tmp_path / "out", image, labels, table.assign(flagged=[0.0, np.nan]), crop_shape=(2, 8, 8))
    assert _files(tmp_path / "out") == []
    mixed = table.assign(flagged=pd.Series([False, True], dtype=object))  # Python booleans in an object column
    out = export_flagged(tmp_path / "out", image, labels, mixed, crop_shape=(2, 8, 8), gallery=False)
    assert list(out.cell_files) == [2]


@pytest.mark.parametrize("stem", ["../..", "../escape", "a/b", "..", ".", "", "/tmp/x", "a\\b", 3, None])
def test_a_stem_that_is_not_a_plain_file_name_is_refused(tmp_path, scene, stem):
    image, labels, table = scene
    folder = tmp_path / "deep" / "out"
    with pytest.raises(ValueError, match="must be a plain file name"):
        export_flagged(folder, image, labels, table, crop_shape=(2, 8, 8), stem=stem)
    assert _files(tmp_path) == []
