import numpy as np
import pytest

from napari_gradcamo.audit.scoring import inside_image_mask, score_cam


def test_shares_partition_attention():
    cam = np.zeros((2, 4, 4))
    cell = np.zeros_like(cam, bool)
    other = np.zeros_like(cam, bool)
    cell[:, :2, :2] = True  # 8 voxels
    other[:, 2:, 2:] = True  # 8 voxels
    cam[cell] = 3.0
    cam[other] = 1.0
    cam[0, 0, 3] = 4.0  # background
    inside = inside_image_mask(cam.shape, ((0, 0), (0, 0), (0, 1)))  # last x column is padding
    s = score_cam(cam, cell, other, inside)
    total = 24 + 8 + 4
    assert s.gradcamo == pytest.approx(24 / total)
    assert s.neighbour_share == pytest.approx((8 - 2) / total + 2 / total)
    assert s.outside_share == pytest.approx(4 / total)
    assert s.background_share == pytest.approx(0.0, abs=1e-12)
    assert s.chance == pytest.approx(8 / 32)


def test_uniform_map_scores_chance():
    cell = np.zeros((3, 5, 7), bool)
    cell[1:3, 1:4, 2:6] = True
    s = score_cam(np.ones(cell.shape), cell)
    assert s.gradcamo == pytest.approx(s.chance)


@pytest.mark.parametrize(
    "cam, mask, reason",
    [
        (np.zeros((2, 3, 3)), np.ones((2, 3, 3), bool), "zero everywhere"),
        (np.ones((2, 3, 3)), np.zeros((2, 3, 3), bool), "mask is empty"),
    ],
)
def test_undefined_scores_are_nan_with_reason(cam, mask, reason):
    s = score_cam(cam, mask)
    assert np.isnan(s.gradcamo) and reason in s.reason


def test_negative_map_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        score_cam(-np.ones((1, 2, 2)), np.ones((1, 2, 2), bool))
