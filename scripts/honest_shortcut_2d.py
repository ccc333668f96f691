"""Honest vs shortcut in 2D, through the CLI: synthetic 2D fields → `gradcamo train --arch small-cnn-2d`
→ `gradcamo audit` on held-out 2D fields (other wells, other seed). Prints one line per scenario and seed.

Usage: python scripts/honest_shortcut_2d.py OUT_DIR [SEEDS...]   (default seeds 1 2 3)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from napari_gradcamo.cli import main as gradcamo


def run(out: Path, scenario: str, seed: int) -> dict:
    root = out / f"{scenario}_s{seed}"
    for args in (
        ["synthetic", str(root / "train"), "--2d", "--scenario", scenario, "--fields", "32", "--seed", str(seed)],
        ["synthetic", str(root / "test"), "--2d", "--scenario", scenario, "--fields", "8", "--seed", str(seed + 100),
         "--first-well", "40"],
        ["train", str(root / "train" / "manifest.csv"), "--out", str(root / "model"), "--arch", "small-cnn-2d",
         "--crop-shape", "1", "32", "32", "--width", "16", "--epochs", "10", "--seed", str(seed)],
    ):
        assert gradcamo(args) == 0, args
    tables = []
    manifest = pd.read_csv(root / "test" / "manifest.csv")
    for _, row in manifest.iterrows():
        image = root / "test" / row["image"]
        code = gradcamo(["audit", str(image), "--model", str(root / "model" / "model.safetensors"),
                         "--masks", str(root / "test" / row["masks"]), "--out", str(root / "audit")])
        assert code == 0
        table = pd.read_csv(next((root / "audit").glob(image.name.split(".")[0] + "*_gradcamo.csv")))
        tables.append(table.assign(true_class=row["class"]))
    table = pd.concat(tables, ignore_index=True)
    return {"scenario": scenario, "seed": seed, "cells": len(table),
            "accuracy": float((table["predicted_class"] == table["true_class"]).mean()),
            "median_gradcamo": float(table["gradcamo"].median()), "median_chance": float(table["chance"].median()),
            "median_background_share": float(table["background_share"].median())}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    seeds = [int(s) for s in sys.argv[2:]] or [1, 2, 3]
    rows = [run(out, scenario, seed) for seed in seeds for scenario in ("honest", "shortcut")]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
