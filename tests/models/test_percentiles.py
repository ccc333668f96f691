"""Percentile normalisation counts 8/16-bit values (and float32 crops holding whole numbers, as crops cut from
8/16-bit images arrive) instead of sorting them: the numbers must equal the sorting path's exactly."""

import numpy as np
import pytest

from napari_gradcamo.models.metadata import _percentiles, _whole_16bit, normalize_crops


def sorted_reference(flat: np.ndarray, qs) -> list[np.ndarray]:
    """The sorting path, written out: linear interpolation between order statistics, in float32."""
    flat = flat.astype(np.float32)
    ordered = np.sort(flat, axis=-1)
    n = flat.shape[-1]
    out = []
    for q in qs:
        p = float(q) / 100.0 * (n - 1)
        below = int(np.floor(p))
        a, b = ordered[..., below], ordered[..., min(below + 1, n - 1)]
        out.append(a + (b - a) * np.float32(p - below))
    return out


@pytest.mark.parametrize("dtype, high", [(np.uint16, 4000), (np.uint16, 65535), (np.uint8, 255), (np.float32, 4000)])
@pytest.mark.parametrize("shape", [(3, 5, 4, 17, 13), (2, 1, 1, 1, 1), (1, 2, 1, 3, 2)])
def test_counted_percentiles_equal_the_sorted_ones(dtype, high, shape):
    rng = np.random.default_rng(7)
    crops = rng.integers(0, high + 1, shape).astype(dtype)
    crops[0, 0] = 3  # a constant channel
    flat = crops.reshape(shape[0], shape[1], -1)
    if dtype == np.float32:
        assert _whole_16bit(flat) is not None, "whole float32 numbers take the counting path"
    for qs in [(1.0, 99.8), (0.0, 100.0), (50.0, 12.5), (33.3, 66.6)]:
        for got, want in zip(_percentiles(flat, qs), sorted_reference(flat, qs)):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    norm = {"method": "percentile", "low": 1.0, "high": 99.8}
    low, high = (p[..., None, None, None] for p in sorted_reference(flat, (1.0, 99.8)))
    want = (crops.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
    np.testing.assert_array_equal(normalize_crops(crops, norm), want)


@pytest.mark.parametrize("values", [[0.5, 1.0, 2.0], [-1.0, 2.0, 3.0], [1.0, 70000.0, 2.0], [1.0, np.nan, 2.0]])
def test_values_that_are_not_16bit_whole_numbers_are_sorted(values):
    flat = np.asarray(values, np.float32)[None, None]
    assert _whole_16bit(flat) is None
    for got, want in zip(_percentiles(flat, (10.0, 90.0)), sorted_reference(flat, (10.0, 90.0))):
        np.testing.assert_array_equal(got, want)
