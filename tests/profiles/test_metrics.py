"""Profile-quality metrics on cases with a known answer (profiles/metrics.py)."""

import numpy as np
import pytest
from sklearn.manifold import trustworthiness as sklearn_trustworthiness

from napari_gradcamo.profiles.metrics import (
    backbone_metric,
    copairs_map,
    held_out_well_accuracy,
    mine_estimate,
    neighbourhood_metrics,
)


def test_identity_embedding_is_perfect():
    x = np.random.default_rng(0).normal(size=(120, 6))
    m = neighbourhood_metrics(x, x.copy(), k=7)
    assert m["trustworthiness"] == pytest.approx(1.0) and m["continuity"] == pytest.approx(1.0)
    assert m["lcmc"] == pytest.approx(1 - 7 / 119)
    assert np.all(m["local_quality"] == 1.0)


def test_random_embedding_is_near_chance():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 10)), rng.normal(size=(400, 2))
    m = neighbourhood_metrics(x, y, k=10)
    assert abs(m["trustworthiness"] - 0.5) < 0.04 and abs(m["continuity"] - 0.5) < 0.04
    assert abs(m["lcmc"]) < 0.02
    # a random permutation of the rows of a perfect embedding is just as bad
    p = neighbourhood_metrics(x, x[rng.permutation(len(x))], k=10)
    assert abs(p["trustworthiness"] - 0.5) < 0.04 and abs(p["lcmc"]) < 0.02


def test_trustworthiness_equals_sklearn_and_continuity_swaps_roles():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 12))
    y = x[:, :3] + 0.3 * rng.normal(size=(200, 3))
    m = neighbourhood_metrics(x, y, k=9)
    assert m["trustworthiness"] == pytest.approx(sklearn_trustworthiness(x, y, n_neighbors=9), abs=1e-12)
    assert m["continuity"] == pytest.approx(neighbourhood_metrics(y, x, k=9)["trustworthiness"], abs=1e-12)
    assert 0.5 < m["trustworthiness"] < 1 and m["local_quality"].shape == (200,)
    assert m["lcmc"] == pytest.approx(m["local_quality"].mean() - 9 / 199)


def test_bad_inputs_raise():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k = 6"):
        neighbourhood_metrics(x, x, k=6)
    with pytest.raises(ValueError, match="one row per cell"):
        neighbourhood_metrics(x, x[:5], k=2)


def _wells(n_classes=4, wells_per_class=4, cells=12, signal=1.5, seed=0):
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(n_classes), wells_per_class * cells)
    wells = np.repeat(np.arange(n_classes * wells_per_class), cells)
    x = rng.normal(size=(len(cls), 8))
    x[:, :2] += signal * np.stack([np.cos(cls), np.sin(cls)], 1)
    return x, cls.astype(str), wells.astype(str), cls


def test_copairs_map_is_higher_for_replicated_than_shuffled_profiles():
    x, cls, wells, _ = _wells()
    real = copairs_map(x, cls, wells, control="0", null_size=500)
    # shuffle which well holds which profiles: replicate wells no longer share a signal
    rng = np.random.default_rng(3)
    blocks = np.split(np.arange(len(x)), 16)
    order = np.concatenate([blocks[i] for i in rng.permutation(16)])
    shuffled = copairs_map(x[order], cls, wells, control="0", null_size=500)
    assert real["wells"] == 16
    assert real["replicate_map"] > 0.7 and real["replicate_map"] > shuffled["replicate_map"] + 0.3
    assert real["activity_map"] > shuffled["activity_map"]
    assert real["replicate_retrieved_fraction"] == 1.0


def test_held_out_well_accuracy_separable_and_null():
    x, cls, wells, _ = _wells(signal=4.0)
    good = held_out_well_accuracy(x, cls, wells)
    assert good["knn_accuracy"] > 0.75 and good["linear_accuracy"] > 0.75 and good["folds"] == 4
    null = held_out_well_accuracy(np.random.default_rng(5).normal(size=x.shape), cls, wells)
    assert null["linear_accuracy"] < 0.45 and null["chance"] == 0.25


def test_backbone_follows_a_dose_and_not_noise():
    x, _, wells, dose = _wells(n_classes=5, signal=0.0)
    trend = x.copy()
    trend[:, 0] += 2.0 * dose  # profiles move along a line with the dose
    on = backbone_metric(trend, dose, wells)
    off = backbone_metric(x, dose, wells)
    assert on["backbone_spearman"] > 0.8 and on["backbone_straightness"] > 0.8
    assert abs(off["backbone_spearman"]) < 0.3
    assert backbone_metric(x, dose % 2, wells)["backbone_spearman"] is None  # two levels: no backbone


def test_mine_sees_dependence():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 3))
    dependent = mine_estimate(x, x[:, :2] + 0.1 * rng.normal(size=(300, 2)), steps=200)
    independent = mine_estimate(x, rng.normal(size=(300, 2)), steps=200)
    assert dependent > 0.5 > independent
