"""Percentile normalisation of crop batches: one partial sort for both percentiles, same values as numpy."""

import numpy as np
import pytest

from napari_gradcamo.models.checkpoint import CheckpointError, normalize_crops


@pytest.mark.parametrize("low, high", [(1.0, 99.8), (0.0, 100.0), (50.0, 50.0), (0.3, 97.1)])
@pytest.mark.parametrize("shape", [(3, 2, 5, 7, 9), (1, 1, 1, 1, 1), (2, 5, 3, 4, 4)])
def test_percentile_normalisation_equals_numpy(low, high, shape):
    rng = np.random.default_rng(sum(shape))
    crops = rng.gamma(2.0, 100.0, shape).astype(np.float32)
    crops[0, 0].flat[:3] = 7.0  # ties
    flat = crops.reshape(shape[0], shape[1], -1)
    lo = np.percentile(flat, low, axis=-1)[..., None, None, None]
    hi = np.percentile(flat, high, axis=-1)[..., None, None, None]
    expected = (crops - lo) / np.maximum(hi - lo, 1e-6)
    got = normalize_crops(crops, {"method": "percentile", "low": low, "high": high})
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_percentile_out_of_range_is_refused():
    with pytest.raises(CheckpointError, match="0..100"):
        normalize_crops(np.ones((1, 1, 2, 2, 2), np.float32), {"method": "percentile", "low": -1, "high": 99})
