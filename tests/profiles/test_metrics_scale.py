"""Profile metrics at plate scale (issue 26): neighbourhood metrics from neighbour lists (memory linear in cells)
agree with the exact all-ranks computation; MINE comes with an interval and is not shown on too few cells."""

import tracemalloc

import numpy as np
import pytest

from napari_gradcamo.profiles.metrics import (
    EXACT_MAX_CELLS,
    MINE_MIN_CELLS,
    mine_interval,
    neighbourhood_metrics,
    profile_metrics,
)


def _pair(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (6, 20))
    high = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, 20))
    low = high[:, :5] @ rng.normal(size=(5, 5)) + 0.8 * rng.normal(size=(n, 5))
    return high, low


def _close(approx, exact, tolerance):
    for key in ("trustworthiness", "continuity", "lcmc"):
        assert approx[key] == pytest.approx(exact[key], abs=tolerance), key


def test_exact_neighbour_lists_give_the_exact_sets_and_ranks_close_to_exact():
    high, low = _pair(1200)
    exact = neighbourhood_metrics(high, low, k=10, method="exact")
    brute = neighbourhood_metrics(high, low, k=10, method="brute")
    assert exact["neighbours"] == "exact" and "brute-force" in brute["neighbours"]
    np.testing.assert_array_equal(brute["local_quality"], exact["local_quality"])  # same neighbour sets
    assert brute["lcmc"] == exact["lcmc"]
    _close(brute, exact, 2e-3)  # only ranks beyond the lists are estimated
    # a wrong rank estimate would show: pretending every rank beyond the list is the list's length + 1
    assert exact["trustworthiness"] - neighbourhood_metrics(high, low, k=10, method="brute", rank_sample=1)[
        "trustworthiness"] != 0


def test_the_memory_of_neighbour_lists_is_linear_in_cells():
    high, low = _pair(8000)
    tracemalloc.start()
    neighbourhood_metrics(high, low, k=10, method="brute")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    exact_bytes = 24 * 8000**2 * 2  # two rank matrices (distances, order, ranks: 24 bytes per pair)
    assert peak < 400e6 < exact_bytes / 7, f"peak {peak / 1e6:.0f} MB"


def test_auto_is_exact_up_to_the_limit():
    high, low = _pair(300)
    assert neighbourhood_metrics(high, low, k=5)["neighbours"] == "exact"
    assert EXACT_MAX_CELLS >= 1000
    with pytest.raises(ValueError, match="method"):
        neighbourhood_metrics(high, low, k=5, method="fast")


@pytest.mark.slow  # pynndescent compiles with numba on first use (tens of seconds on a loaded machine)
def test_pynndescent_neighbourhood_metrics_are_close_to_exact():
    high, low = _pair(1500, seed=1)
    exact = neighbourhood_metrics(high, low, k=10, method="exact")
    approx = neighbourhood_metrics(high, low, k=10, method="approximate")
    assert "pynndescent" in approx["neighbours"]
    _close(approx, exact, 0.01)
    assert np.mean(approx["local_quality"] == exact["local_quality"]) > 0.9


def test_mine_has_an_interval_and_is_not_shown_on_too_few_cells():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    estimate, low, high = mine_interval(x, x + 0.3 * rng.normal(size=(600, 3)), steps=150)
    assert low <= estimate <= high and high - low > 0
    assert low > 0.5  # strongly dependent: the whole interval is clearly above 0
    n = MINE_MIN_CELLS - 1
    profiles = rng.normal(size=(n, 4))
    classes, wells = np.repeat(["a", "b"], n)[:n], np.arange(n) % 8
    metrics, _ = profile_metrics(profiles, profiles + rng.normal(size=(n, 4)), classes, wells, k=5, mine=True)
    assert metrics["mine_nats"] is None and metrics["mine_low"] is None
    assert str(MINE_MIN_CELLS) in metrics["mine_note"]


def test_the_reference_pca_of_many_crops_is_fitted_on_a_sample_and_applied_to_all():
    from napari_gradcamo.profiles.metrics import pca_reference

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 2 * 4 * 6 * 6))
    crops = (rng.normal(size=(900, 3)) @ basis + 0.05 * rng.normal(size=(900, 288))).reshape(900, 2, 4, 6, 6)
    full = pca_reference(crops, n_components=3)
    sampled = pca_reference(crops, n_components=3, fit_cells=300)
    assert sampled.shape == full.shape == (900, 3)
    # the same 3-dimensional space up to a rotation: each projects onto the other almost entirely
    q_full, _ = np.linalg.qr(full - full.mean(0))
    q_sampled, _ = np.linalg.qr(sampled - sampled.mean(0))
    assert np.linalg.svd(q_full.T @ q_sampled, compute_uv=False).min() > 0.99
