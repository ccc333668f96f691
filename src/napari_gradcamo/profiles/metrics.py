"""How good are single-cell profiles? Metrics for any profiles (supervised features, VAE latents, hand-crafted).

* **Neighbourhood preservation** (rank-based; Venna & Kaski 2006, Lee & Verleysen 2009) between a reference
  space ``high`` (here: the crops' pixels, PCA-reduced) and the profiles ``low``, with r(i, j) the rank of j
  among i's neighbours (1 = nearest), N_k the k nearest neighbours, U_k(i) = N_k^low(i) \\ N_k^high(i) and
  V_k(i) = N_k^high(i) \\ N_k^low(i):

  - trustworthiness T(k) = 1 − 2/(N k (2N − 3k − 1)) · Σ_i Σ_{j ∈ U_k(i)} (r_high(i, j) − k)
  - continuity      C(k) = 1 − 2/(N k (2N − 3k − 1)) · Σ_i Σ_{j ∈ V_k(i)} (r_low(i, j) − k)
  - LCMC(k) = mean_i |N_k^high(i) ∩ N_k^low(i)| / k − k / (N − 1)  (0 for a random embedding, at most 1 − k/(N−1))
  - local quality q_i = |N_k^high(i) ∩ N_k^low(i)| / k  (per cell; its mean minus k/(N − 1) is the LCMC).

  T and C are 1 for a perfect embedding and ≈ 0.5 for a random one.
* **Classifier accuracy on held-out wells**: k-nearest-neighbour and logistic-regression accuracy of the class,
  cross-validated with whole wells held out (StratifiedGroupKFold), features standardised on the training folds.
* **Backbone** along an ordered dose (our definition of the seed's backbone metric, cross-fitted): the wells of
  each dose are split in two folds; the centroids of the dose levels in one fold, joined in dose order, form a
  polyline (the backbone); each cell of the other fold is projected on its nearest backbone point, giving a
  position t in [0, 1] along it. ``backbone_spearman`` = Spearman ρ between dose and t over all cells (1: the
  profiles order cells by dose along the backbone). ``backbone_straightness`` = |c_last − c_first| / length of
  the all-cell backbone (1: a straight, monotone trajectory).
* **mAP with copairs** (JUMP's practice), on well-level median profiles, cosine distance: replicate retrieval
  (positives: other wells of the same class; negatives: wells of other classes) and phenotypic activity
  (positives: other wells of the same class; negatives: control wells), with copairs' permutation p-values.
* **MINE** (optional, torch): Donsker–Varadhan lower bound on I(crop; profile) in nats between the leading 8
  principal components of each, trained on half the cells and evaluated on the other half (a held-out
  estimate: it can be negative when the critic does not generalise), with a 95 % bootstrap interval over the
  held-out cells (``mine_low``, ``mine_high``); not computed below :data:`MINE_MIN_CELLS` cells.
* Neighbourhood metrics scale to plates: exact up to :data:`EXACT_MAX_CELLS` cells, beyond that from
  pynndescent's approximate neighbour lists (memory linear in cells; see :func:`neighbourhood_metrics`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def neighbour_ranks(x: np.ndarray) -> np.ndarray:
    """r[i, j] = rank of j among i's neighbours by Euclidean distance (1 = nearest; r[i, i] = 0)."""
    from scipy.spatial.distance import cdist

    d = cdist(x, x)
    np.fill_diagonal(d, -np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(len(x))[:, None]
    ranks[rows, order] = np.arange(len(x))[None, :]
    return ranks


def _check_pair(high, low, k):
    high, low = np.asarray(high, np.float64), np.asarray(low, np.float64)
    if high.ndim != 2 or low.ndim != 2 or len(high) != len(low):
        raise ValueError("The reference and the embedding must be 2D arrays with one row per cell each.")
    if not 1 <= k < len(high) / 2:
        raise ValueError(f"k = {k} must satisfy 1 ≤ k < N/2 (N = {len(high)} cells).")
    if not (np.isfinite(high).all() and np.isfinite(low).all()):
        raise ValueError("The profiles hold NaN or infinite values; drop those cells first.")
    return high, low


#: Up to this many cells, neighbourhood metrics use every rank exactly (memory ~ 24 N² bytes: 0.4 GB at 4,000).
EXACT_MAX_CELLS = 4000
#: Sampled cells a rank beyond the neighbour lists is estimated from (see :func:`neighbourhood_metrics`).
RANK_SAMPLE = 2000


def _neighbour_lists(x: np.ndarray, n: int, method: str, seed: int) -> np.ndarray:
    """Indices of each row's ``n`` nearest other rows, nearest first: pynndescent (approximate) or scikit-learn's
    chunked brute force (exact lists; memory linear in cells, time quadratic)."""
    if method == "approximate":
        from pynndescent import NNDescent

        index = NNDescent(x, n_neighbors=n + 1, metric="euclidean", random_state=seed, low_memory=True,
                          n_jobs=1, compressed=True)
        idx, dist = index.neighbor_graph
        order = np.argsort(dist, axis=1, kind="stable")  # pynndescent's lists are sorted; make sure
        idx = np.take_along_axis(idx, order, axis=1)
    else:
        import sklearn
        from sklearn.neighbors import NearestNeighbors

        with sklearn.config_context(working_memory=128):  # distance chunks of ≤ 128 MB
            idx = NearestNeighbors(n_neighbors=n + 1, algorithm="brute").fit(x).kneighbors(x, return_distance=False)
    own = idx == np.arange(len(x))[:, None]
    own[~own.any(axis=1), -1] = True  # a row whose own index is missing (duplicates) drops its farthest entry
    return idx[~own].reshape(len(x), n)


def _ranks(x: np.ndarray, lists: np.ndarray, rows: np.ndarray, cols: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Rank of ``cols[t]`` among the neighbours of ``rows[t]`` in ``x``: its place in the row's neighbour list, else
    estimated from a random sample of cells (1 + (N − 1) × the share of sampled cells nearer than it), at least
    one more than the list's length."""
    n, length = len(x), lists.shape[1]
    hits = lists[rows] == cols[:, None]
    ranks = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0).astype(np.float64)
    todo = np.flatnonzero(ranks == 0)
    reference = x[sample]
    for start in range(0, len(todo), 4096):
        pairs = todo[start:start + 4096]
        i, j = rows[pairs], cols[pairs]
        d_ij = np.linalg.norm(x[i] - x[j], axis=1)
        d_sample = np.sqrt(np.maximum(((x[i] ** 2).sum(1)[:, None] + (reference ** 2).sum(1)[None, :]
                                       - 2.0 * x[i] @ reference.T), 0.0))
        nearer = (d_sample < d_ij[:, None]).sum(axis=1)
        ranks[pairs] = np.maximum(1.0 + (n - 1) * nearer / len(sample), length + 1)
    return ranks


def _approximate_neighbourhood(high, low, k, method, n_neighbors, rank_sample, seed) -> dict:
    n = len(high)
    length = int(min(n - 1, n_neighbors or 5 * k))
    lists_high = _neighbour_lists(high, length, method, seed)
    lists_low = _neighbour_lists(low, length, method, seed)
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n, rank_sample), replace=False)
    rows = np.repeat(np.arange(n), k)
    knn_high, knn_low = lists_high[:, :k], lists_low[:, :k]
    in_high = (knn_low[:, :, None] == knn_high[:, None, :]).any(axis=2)  # low neighbour j also a high one?
    in_low = (knn_high[:, :, None] == knn_low[:, None, :]).any(axis=2)
    u_rows, u_cols = rows[~in_high.ravel()], knn_low.ravel()[~in_high.ravel()]
    v_rows, v_cols = rows[~in_low.ravel()], knn_high.ravel()[~in_low.ravel()]
    scale = 2.0 / (n * k * (2 * n - 3 * k - 1))
    trust = 1.0 - scale * float((_ranks(high, lists_high, u_rows, u_cols, sample) - k).sum())
    cont = 1.0 - scale * float((_ranks(low, lists_low, v_rows, v_cols, sample) - k).sum())
    quality = in_high.sum(axis=1) / k
    return {"trustworthiness": trust, "continuity": cont, "local_quality": quality,
            "neighbours": f"{'pynndescent' if method == 'approximate' else 'brute-force'} lists of {length}, "
                          f"ranks beyond them estimated from {len(sample)} sampled cells"}


def neighbourhood_metrics(high: np.ndarray, low: np.ndarray, k: int = 10, *, method: str = "auto",
                          n_neighbors: int | None = None, rank_sample: int = RANK_SAMPLE, seed: int = 0) -> dict:
    """Trustworthiness, continuity, LCMC at ``k`` and the per-cell local quality (``local_quality``, array).

    Parameters
    ----------
    high, low : (N, d) arrays, the reference and the profiles (one row per cell).
    k : neighbourhood size.
    method : ``"exact"`` (every rank; memory and time quadratic in N), ``"approximate"`` (pynndescent neighbour
        lists; memory linear in N), ``"brute"`` (exact neighbour lists by chunked brute force; memory linear, time
        quadratic) or ``"auto"`` (exact up to :data:`EXACT_MAX_CELLS` cells, else approximate).
    n_neighbors : length of the neighbour lists of the approximate methods (default 5 k). The neighbour sets
        (LCMC, local quality) come from them; a rank beyond a list, needed for the few pairs that are neighbours
        in one space and not within the list in the other, is estimated from ``rank_sample`` random cells.

    Returns
    -------
    dict
        ``k``, ``trustworthiness``, ``continuity``, ``lcmc``, ``local_quality`` and ``neighbours`` (how they were
        found). The approximation's error against the exact value is measured in docs/self-supervised.md.
    """
    high, low = _check_pair(high, low, k)
    n = len(high)
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_CELLS else "approximate"
    if method not in ("exact", "approximate", "brute"):
        raise ValueError(f"method {method!r}: use 'auto', 'exact', 'approximate' or 'brute'.")
    if method == "exact":
        r_high, r_low = neighbour_ranks(high), neighbour_ranks(low)
        in_high = (r_high >= 1) & (r_high <= k)
        in_low = (r_low >= 1) & (r_low <= k)
        scale = 2.0 / (n * k * (2 * n - 3 * k - 1))
        out = {"trustworthiness": 1.0 - scale * float(((r_high - k) * (in_low & ~in_high)).sum()),
               "continuity": 1.0 - scale * float(((r_low - k) * (in_high & ~in_low)).sum()),
               "local_quality": (in_high & in_low).sum(axis=1) / k, "neighbours": "exact"}
    else:
        out = _approximate_neighbourhood(high, low, k, method, n_neighbors, rank_sample, seed)
    quality = out["local_quality"]
    return {"k": int(k), "trustworthiness": out["trustworthiness"], "continuity": out["continuity"],
            "lcmc": float(quality.mean() - k / (n - 1)), "local_quality": quality, "neighbours": out["neighbours"]}


def held_out_well_accuracy(x: np.ndarray, y: Sequence, groups: Sequence, n_neighbors: int = 5, seed: int = 0) -> dict:
    """kNN and linear (logistic) accuracy of ``y`` with whole wells (``groups``) held out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y, groups = np.asarray(y).astype(str), np.asarray(groups).astype(str)
    wells_per_class = pd.Series(groups).groupby(y).nunique()
    n_splits = int(min(5, wells_per_class.min()))
    if len(wells_per_class) < 2 or n_splits < 2:
        return {"knn_accuracy": None, "linear_accuracy": None,
                "accuracy_note": "needs ≥ 2 classes with ≥ 2 wells each"}
    folds = list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(x, y, groups))
    out = {}
    for name, model in (("knn", KNeighborsClassifier(n_neighbors)), ("linear", LogisticRegression(max_iter=2000))):
        correct = 0
        for train, test in folds:
            clf = make_pipeline(StandardScaler(), model).fit(x[train], y[train])
            correct += int((clf.predict(x[test]) == y[test]).sum())
        out[f"{name}_accuracy"] = correct / len(y)
    out["folds"] = n_splits
    out["chance"] = float(pd.Series(y).value_counts(normalize=True).max())
    return out


def _polyline_position(points: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Arc-length position in [0, 1] of each point's nearest point on the polyline through ``nodes``."""
    seg = np.diff(nodes, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    total = max(lengths.sum(), 1e-12)
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    best_d, best_t = np.full(len(points), np.inf), np.zeros(len(points))
    for a, s, length, start in zip(nodes[:-1], seg, lengths, starts):
        u = np.clip((points - a) @ s / max(length**2, 1e-12), 0.0, 1.0)
        d = np.linalg.norm(points - (a + u[:, None] * s), axis=1)
        closer = d < best_d
        best_d[closer], best_t[closer] = d[closer], (start + u[closer] * length) / total
    return best_t


def backbone_metric(x: np.ndarray, dose: Sequence[float], groups: Sequence) -> dict:
    """Cross-fitted backbone metric along an ordered dose (see the module docstring)."""
    from scipy.stats import spearmanr

    x = np.asarray(x, np.float64)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    dose, groups = np.asarray(dose, np.float64), np.asarray(groups).astype(str)
    levels = np.unique(dose)
    if len(levels) < 3:
        return {"backbone_spearman": None, "backbone_straightness": None, "backbone_note": "needs ≥ 3 dose levels"}
    fold = np.zeros(len(x), int)
    for level in levels:
        wells = sorted(set(groups[dose == level]))
        if len(wells) < 2:
            return {"backbone_spearman": None, "backbone_straightness": None,
                    "backbone_note": f"dose {level:g} has fewer than 2 wells"}
        for i, w in enumerate(wells):
            fold[groups == w] = i % 2
    t = np.zeros(len(x))
    for f in (0, 1):
        nodes = np.stack([x[(fold != f) & (dose == level)].mean(0) for level in levels])
        t[fold == f] = _polyline_position(x[fold == f], nodes)
    nodes = np.stack([x[dose == level].mean(0) for level in levels])
    length = np.linalg.norm(np.diff(nodes, axis=0), axis=1).sum()
    return {"backbone_spearman": float(spearmanr(dose, t).statistic),
            "backbone_straightness": float(np.linalg.norm(nodes[-1] - nodes[0]) / max(length, 1e-12))}


def copairs_map(x: np.ndarray, classes: Sequence, wells: Sequence, control: str | None = None,
                null_size: int = 2000, seed: int = 0) -> dict:
    """Replicate-retrieval and phenotypic-activity mAP (copairs) of well-median profiles."""
    import warnings

    from copairs.map import average_precision, mean_average_precision

    table = pd.DataFrame(np.asarray(x, np.float64)).assign(_class=np.asarray(classes).astype(str),
                                                           _well=np.asarray(wells).astype(str))
    per_well = table.groupby("_well").agg({**{c: "median" for c in range(x.shape[1])}, "_class": "first"})
    meta = pd.DataFrame({"class": per_well["_class"].to_numpy(), "well": per_well.index.to_numpy()})
    feats = per_well[list(range(x.shape[1]))].to_numpy()
    out: dict = {"wells": int(len(meta))}

    def summarise(ap, name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = mean_average_precision(ap, ["class"], null_size=null_size, threshold=0.05, seed=seed,
                                       progress_bar=False)
        out[f"{name}_map"] = float(m["mean_average_precision"].mean())
        out[f"{name}_retrieved_fraction"] = float(m["below_corrected_p"].mean())
        out[f"{name}_per_class"] = {str(c): float(v) for c, v in zip(m["class"], m["mean_average_precision"])}

    if meta["class"].value_counts().min() < 2 or meta["class"].nunique() < 2:
        return {**out, "map_note": "needs ≥ 2 classes with ≥ 2 wells each"}
    ap = average_precision(meta, feats, ["class"], [], [], ["class"], progress_bar=False)
    summarise(ap, "replicate")
    if control is not None and (meta["class"] == control).sum() >= 2:
        meta["is_control"] = meta["class"] == control
        ap = average_precision(meta, feats, ["class"], [], [], ["class", "is_control"], progress_bar=False)
        summarise(ap[~ap["is_control"]].reset_index(drop=True), "activity")
    return out


def mine_interval(x: np.ndarray, z: np.ndarray, steps: int = 400, seed: int = 0, hidden: int = 64,
                  n_boot: int = 500, level: float = 0.95) -> tuple[float, float, float]:
    """MINE (Belghazi et al. 2018): the Donsker–Varadhan bound on I(x; z) in nats, the critic fitted on half of
    the rows and the bound evaluated on the other half, with a bootstrap interval over the held-out rows.

    Returns
    -------
    (estimate, low, high)
        The held-out bound and its ``level`` percentile interval (the critic fixed; rows of the held-out half
        resampled ``n_boot`` times). The interval holds the evaluation's sampling error, not the spread over
        training seeds.
    """
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor((x - x.mean(0)) / np.maximum(x.std(0), 1e-12), dtype=torch.float32)
    z = torch.as_tensor((z - z.mean(0)) / np.maximum(z.std(0), 1e-12), dtype=torch.float32)
    perm = torch.randperm(len(x), generator=gen)
    fit, held = perm[: len(x) // 2], perm[len(x) // 2 :]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1] + z.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def terms(rows):
        joint = net(torch.cat([x[rows], z[rows]], 1)).squeeze(1)
        shuffled = rows[torch.randperm(len(rows), generator=gen)]
        return joint, net(torch.cat([x[rows], z[shuffled]], 1)).squeeze(1)

    def bound(joint, marginal):
        return joint.mean() - (torch.logsumexp(marginal, 0) - math.log(len(marginal)))

    for _ in range(steps):
        opt.zero_grad()
        (-bound(*terms(fit))).backward()
        opt.step()
    with torch.no_grad():
        pairs = [terms(held) for _ in range(10)]
        joint = torch.stack([j for j, _ in pairs]).numpy().astype(np.float64)  # (10 shuffles, m)
        marginal = torch.stack([m for _, m in pairs]).numpy().astype(np.float64)

    def dv(index):
        a, b = joint[:, index], marginal[:, index]
        return float(np.mean(a.mean(1) - (np.logaddexp.reduce(b, axis=1) - np.log(b.shape[1]))))

    m = joint.shape[1]
    estimate = dv(np.arange(m))
    rng = np.random.default_rng(seed)
    boot = [dv(rng.integers(0, m, m)) for _ in range(n_boot)]
    tail = (1.0 - level) / 2.0
    return estimate, float(np.quantile(boot, tail)), float(np.quantile(boot, 1.0 - tail))


def mine_estimate(x: np.ndarray, z: np.ndarray, steps: int = 400, seed: int = 0, hidden: int = 64) -> float:
    """The held-out MINE bound of :func:`mine_interval` alone (nats)."""
    return mine_interval(x, z, steps, seed, hidden, n_boot=1)[0]


#: Below this many cells MINE is not shown (``mine_nats`` None). Measured (docs/self-supervised.md,
#: scripts/mine_min_n.py, 3 seeds): from 3,000 cells on, the held-out bound recovers ≥ 80 % of a known 1.02 nats
#: in every seed; on fewer it recovers < 80 % (≤ 0.79 at 1,000, ≤ 0.34 at 300) and independent data read ≤ −0.78.
MINE_MIN_CELLS = 3000
MINE_DIMS = 8


def _leading_components(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` principal components (MINE's critic overfits high-dimensional inputs on few cells)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float64)
    return x if x.shape[1] <= n else PCA(n, random_state=seed).fit_transform(x)


#: The reference PCA is fitted on at most this many crops (then applied to every crop in batches).
PCA_FIT_CELLS = 5000


def pca_reference(crops: np.ndarray, n_components: int = 50, seed: int = 0, fit_cells: int = PCA_FIT_CELLS
                  ) -> np.ndarray:
    """The reference space for neighbourhood preservation: crops flattened, standardised per voxel, PCA.

    Up to ``fit_cells`` crops, every crop is used (as before); beyond, the standardisation and the PCA are fitted
    on ``fit_cells`` randomly chosen crops and applied to all crops in batches, so memory does not grow with the
    number of cells beyond the crops themselves (which may be a memory-mapped array)."""
    from sklearn.decomposition import PCA

    n_cells = len(crops)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n_cells, fit_cells, replace=False)) if n_cells > fit_cells else np.arange(n_cells)
    flat = np.asarray(crops[fit_rows], np.float64).reshape(len(fit_rows), -1)
    mean, std = flat.mean(0), np.maximum(flat.std(0), 1e-12)
    n = int(min(n_components, len(flat) - 1, flat.shape[1]))
    pca = PCA(n, random_state=seed, svd_solver="randomized")
    fitted = pca.fit_transform((flat - mean) / std)
    if n_cells <= fit_cells:
        return fitted
    out = np.empty((n_cells, n), np.float64)
    for start in range(0, n_cells, 4096):
        batch = np.asarray(crops[start:start + 4096], np.float64).reshape(-1, flat.shape[1])
        out[start:start + len(batch)] = pca.transform((batch - mean) / std)
    return out


def profile_metrics(profiles: np.ndarray, reference: np.ndarray, classes: Sequence, wells: Sequence, *,
                    control: str | None = None, dose: Sequence[float] | None = None, k: int = 10,
                    mine: bool = False, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Every metric for one set of profiles; returns (metrics, per-cell local quality)."""
    profiles = np.asarray(profiles, np.float64)
    k = int(min(k, max(1, (len(profiles) - 1) // 2 - 1)))
    hood = neighbourhood_metrics(reference, profiles, k)
    quality = hood.pop("local_quality")
    metrics = {"cells": int(len(profiles)), "features": int(profiles.shape[1]), **hood,
               **held_out_well_accuracy(profiles, classes, wells, seed=seed),
               **copairs_map(profiles, classes, wells, control=control, seed=seed)}
    if dose is not None:
        metrics.update(backbone_metric(profiles, dose, wells))
    if mine and len(profiles) < MINE_MIN_CELLS:
        metrics.update(mine_nats=None, mine_low=None, mine_high=None,
                       mine_note=f"not shown below {MINE_MIN_CELLS} cells (unreliable held-out estimate)")
    elif mine:
        estimate, low, high = mine_interval(_leading_components(reference, MINE_DIMS, seed),
                                            _leading_components(profiles, MINE_DIMS, seed), seed=seed)
        metrics.update(mine_nats=estimate, mine_low=low, mine_high=high)
    return metrics, quality


def table_metrics(table: pd.DataFrame, crops: np.ndarray, columns: Sequence[str], *, control: str | None = None,
                  dose_classes: Sequence[str] | None = None, k: int = 10, mine: bool = False,
                  seed: int = 0) -> tuple[dict, np.ndarray]:
    """:func:`profile_metrics` for a profile table (``class``, ``plate``, ``well`` columns; one row per crop).

    ``dose_classes``: the classes in dose order (the backbone metric is skipped without it); cells of other
    classes are left out of the backbone only. Returns (metrics, per-cell local quality).
    """
    if len(table) != len(crops):
        raise ValueError(f"{len(table)} profiles but {len(crops)} crops: they must be the same cells in order.")
    classes = table["class"].astype(str).to_numpy()
    wells = (table["plate"].astype(str) + "/" + table["well"].astype(str)).to_numpy()
    x = table[list(columns)].to_numpy(np.float64)
    keep = np.isfinite(x).all(axis=1)
    if keep.sum() < 8:
        raise ValueError("Fewer than 8 cells with finite profiles: too few for profile metrics.")
    x = (x - x[keep].mean(0)) / np.maximum(x[keep].std(0), 1e-12)
    metrics, quality_kept = profile_metrics(x[keep], pca_reference(crops[keep], seed=seed), classes[keep],
                                            wells[keep], control=control, k=k, mine=mine, seed=seed)
    if dose_classes:
        unknown = sorted(set(dose_classes) - set(classes))
        if unknown:
            raise ValueError(f"--dose-classes names {unknown}, which no cell carries; classes: {sorted(set(classes))}.")
        on = keep & np.isin(classes, list(dose_classes))
        order = {c: i for i, c in enumerate(dose_classes)}
        metrics.update(backbone_metric(x[on], [order[c] for c in classes[on]], wells[on]))
    quality = np.full(len(table), np.nan)
    quality[keep] = quality_kept
    metrics["cells_left_out"] = int((~keep).sum())
    return metrics, quality
