"""SegmentationSettings of the wrong type are named (issue 23: text flow_threshold / anisotropy raised a
TypeError from math.isfinite). Nothing here loads cellpose: settings are checked first."""

import numpy as np
import pytest

from napari_gradcamo.io.images import make_image
from napari_gradcamo.segment.cellpose import SegmentationError, SegmentationSettings, segment


@pytest.fixture(scope="module")
def image():
    return make_image(np.random.default_rng(1).random((1, 2, 16, 16)).astype(np.float32), "CZYX", ["dna"])


@pytest.mark.parametrize("field, value, message", [
    ("flow_threshold", "0.4", r"flow_threshold must be a number, got '0.4' \(str\)"),
    ("anisotropy", "2", r"anisotropy must be a number, got '2'"),
    ("cellprob_threshold", None, "cellprob_threshold must be a number"),
    ("stitch_threshold", True, "stitch_threshold must be a number"),
    ("diameter", "30", "diameter must be a number"),
    ("min_size", 15.5, "min_size must be a whole number"),
    ("batch_size", "8", "batch_size must be a whole number"),
    ("normalize_percentiles", (1.0, "99"), "normalize_percentiles must be two numbers"),
    ("normalize_percentiles", 99.0, "normalize_percentiles must be two numbers"),
    ("mode", 3, "mode must be 'stitch2d' or '3d'"),
    ("gpu", "yes", "gpu must be True, False or None"),
])
def test_settings_of_the_wrong_type_are_named(image, field, value, message):
    with pytest.raises(SegmentationError, match=message):
        segment(image, SegmentationSettings(**{field: value}))


def test_settings_that_are_not_settings(image):
    with pytest.raises(SegmentationError, match="settings must be a SegmentationSettings, not dict"):
        segment(image, {"diameter": 30})
    assert issubclass(SegmentationError, ValueError)
