"""Neighbourhood metrics at plate scale: the approximate methods against the exact value, and their cost.

Data: a 50-dimensional reference (12 Gaussian clusters, as PCA'd crops of a few phenotypes) and 8-dimensional
profiles (a noisy linear map of 8 reference dimensions), k = 10. One JSON line per (cells, method, seed):
trustworthiness, continuity, LCMC, seconds and the process's peak RSS so far (MB).

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python scripts/profile_metrics_scale.py --cells 6000 \\
        --methods exact,brute,approximate --seeds 0,1,2 --jsonl docs/results/profile_metrics_scale.jsonl
    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python scripts/profile_metrics_scale.py --cells 100000 \\
        --methods approximate --seeds 0 --jsonl docs/results/profile_metrics_scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from napari_gradcamo.profiles.metrics import neighbourhood_metrics


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (12, 50))
    high = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, 50))
    low = high[:, :8] @ rng.normal(size=(8, 8)) + 0.8 * rng.normal(size=(n, 8))
    return high, low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--methods", default="exact,approximate")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    high, low = data(args.cells)
    for method in args.methods.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            if method == "exact" and seed != 0:
                continue  # deterministic
            started = time.perf_counter()
            m = neighbourhood_metrics(high, low, args.k, method=method, seed=seed)
            row = {"cells": args.cells, "method": method, "seed": seed, "k": args.k,
                   **{key: m[key] for key in ("trustworthiness", "continuity", "lcmc")},
                   "seconds": round(time.perf_counter() - started, 1),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
                   "neighbours": m["neighbours"]}
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
