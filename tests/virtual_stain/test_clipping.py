"""Virtual-stain predictions stay within the training stains' range (issue 26: a predicted DNA background of
−110 camera units where the data never goes below 138)."""

import numpy as np
import pytest

from napari_gradcamo.virtual_stain.data import StainScaling
from napari_gradcamo.virtual_stain.model import VirtualStainError


def _stains(seed=0):
    rng = np.random.default_rng(seed)
    return [np.stack([rng.uniform(138, 4000, (8, 8)), rng.uniform(90, 600, (8, 8))]) for _ in range(3)]


def test_predictions_in_camera_units_never_leave_the_training_range():
    stains = _stains()
    scaling = StainScaling.fit(stains)
    pooled = np.concatenate([s.reshape(2, -1) for s in stains], axis=1)
    assert scaling.minimum == pytest.approx(pooled.min(1).tolist()) and scaling.maximum == pytest.approx(
        pooled.max(1).tolist())
    # the sampler's x0 range is ±1.5 model units: far outside the data on both sides
    extreme = np.stack([np.full((2, 4, 4), -1.5), np.full((2, 4, 4), 1.5)]).astype(np.float32)
    unclipped = (extreme + 1) * 0.5 * (np.array(scaling.high) - np.array(scaling.low))[None, :, None, None] + \
        np.array(scaling.low)[None, :, None, None]
    assert unclipped[0, 0].min() < pooled[0].min()  # the bug: below anything the data holds
    camera = scaling.to_camera(extreme)
    for stain in range(2):
        assert camera[:, stain].min() == pytest.approx(pooled[stain].min(), rel=1e-6)
        assert camera[:, stain].max() == pytest.approx(pooled[stain].max(), rel=1e-6)
    inside = scaling.to_model(stains[0][None])
    np.testing.assert_allclose(scaling.to_camera(inside), stains[0][None], rtol=1e-5)  # values inside unchanged
    np.testing.assert_allclose(scaling.to_camera(scaling.clip_model(extreme)), camera, rtol=1e-5)


def test_the_range_is_saved_and_an_older_model_clips_to_its_percentiles():
    scaling = StainScaling.fit(_stains(1))
    again = StainScaling.from_dict(scaling.to_dict())
    assert again == scaling
    old = StainScaling.from_dict({"low": scaling.low, "high": scaling.high})  # saved before the range was kept
    camera = old.to_camera(np.full((1, 2, 2, 2), 1.5, np.float32))
    np.testing.assert_allclose(camera[0, :, 0, 0], scaling.high, rtol=1e-6)
    with pytest.raises(VirtualStainError, match="minimum"):
        StainScaling.from_dict({**scaling.to_dict(), "maximum": None})
