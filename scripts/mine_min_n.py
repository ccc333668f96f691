"""How many cells MINE needs: the held-out Donsker–Varadhan bound (profiles/metrics.py: mine_interval) on
Gaussian data of known mutual information, 8 + 8 dimensions as in the profile metrics (each dimension of z is
rho x + sqrt(1 - rho^2) noise; I = -4 log(1 - rho^2) nats), every seed reported. One JSON line per run.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python scripts/mine_min_n.py --jsonl docs/results/mine_min_n.jsonl
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from napari_gradcamo.profiles.metrics import mine_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="110,300,1000,3000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    for n in [int(c) for c in args.cells.split(",")]:
        for truth in (0.0, 1.02):
            rho = math.sqrt(1.0 - math.exp(-truth / 4.0))
            for seed in [int(s) for s in args.seeds.split(",")]:
                rng = np.random.default_rng(100 + seed)
                x = rng.normal(size=(n, 8))
                z = rho * x + math.sqrt(1.0 - rho**2) * rng.normal(size=(n, 8))
                estimate, low, high = mine_interval(x, z, seed=seed)
                row = {"cells": n, "truth_nats": truth, "seed": seed, "mine_nats": round(estimate, 3),
                       "low": round(low, 3), "high": round(high, 3)}
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as handle:
                        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
