"""The regularisers against a quantity they do not optimise: honest data and no-signal data, every seed.

Data (synthetic 3D Cell Painting, ``napari_gradcamo.synthetic.experiment``):

* ``honest``: the cells carry the treatment (morphology); the background is clean.
* ``no-signal``: every cell looks like a control; only a stripe texture in the medium outside the cells
  carries the class (the ``shortcut`` scenario). A model that learns here reads the context.

For each data set, seed and regulariser the small 3D CNN is trained (same data, initial weights and
augmentation draws for every regulariser of a seed) and measured on held-out fields from unseen wells:
accuracy, the audit's median Grad-CAMO at ``stage1`` and ``stage2`` (Grad-CAM, predicted class), the share of
cells the audit flags (normalised < 0 at ``stage1``), and occlusion (``audit/occlusion.py``): the median drop of
the predicted class's probability with the cell hidden and with the context hidden. Neither regulariser
optimises the occlusion drops or the held-out accuracy.

Regularisers (``train/regularizer.py``): ``none``; ``outside-gradient`` (``--outside-gradient-weight λ``);
``context`` (``--context-randomisation 1``); ``both``.

Usage (one thread, deterministic for a given thread count)::

    PYTHONPATH=src python scripts/regularizer_experiment.py --seeds 0 1 2 3 4 5 6 7 \\
        --json docs/results/regularizer_runs.jsonl --write docs/regularizer.md

``--json`` appends each finished run (a run already in the file is skipped, so an interrupted command can be
run again); ``--from-json`` re-renders the tables from the file without training.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.crops.datasets import crops_from_fields
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.synthetic.experiment import (
    CLASS_NAMES,
    CROP_SHAPE,
    TARGET_LAYER,
    accuracy,
    audit_fields,
    scenario_fields,
)
from napari_gradcamo.synthetic.generator import STAINS
from napari_gradcamo.train.data import fit_normalization
from napari_gradcamo.train.loop import train_classifier

DATA = {"honest": "honest", "no-signal": "shortcut"}
REGULARIZERS = ("none", "context", "outside-gradient", "both")
#: the layers whose Grad-CAMO is reported (stage1 is the layer the audit uses for these models)
LAYERS = (TARGET_LAYER, "stage2")


def settings_for(regularizer: str, weight: float) -> dict:
    return {"outside_gradient_weight": weight if regularizer in ("outside-gradient", "both") else 0.0,
            "context_randomisation": 1.0 if regularizer in ("context", "both") else 0.0}


def run(data_name: str, seed: int, regularizer: str, args, train, held_out) -> dict:
    normalization = fit_normalization(train.x)
    meta = ModelMetadata("small-cnn-3d", list(CLASS_NAMES), list(STAINS), list(CROP_SHAPE),
                         architecture_kwargs={"width": args.width}, normalization=normalization,
                         target_layer=TARGET_LAYER)
    torch.manual_seed(seed)
    model = build_model(meta)
    settings = settings_for(regularizer, args.weight)
    start = time.perf_counter()
    history = train_classifier(model, train, normalization, epochs=args.epochs, seed=seed, **settings)
    seconds = time.perf_counter() - start
    bundle = ModelBundle(model, meta, regularizer)
    table = audit_fields(bundle, held_out, AuditSettings(target_layer=TARGET_LAYER, occlusion=True, device="cpu"))
    row = {
        "data": data_name, "seed": seed, "regularizer": regularizer, **settings, "epochs": args.epochs,
        "fields": args.fields, "train_seconds": round(seconds, 1), "train_accuracy": history.accuracy[-1],
        "final_penalty": history.penalty[-1], "final_outside_share": history.outside_gradient_share[-1],
        "cells": int(len(table)), "accuracy": accuracy(table),
        "predicted_treated": float(np.mean(table["predicted_class"] == CLASS_NAMES[1])),
        f"gradcamo_{TARGET_LAYER}": float(table["gradcamo"].median()),
        f"normalised_{TARGET_LAYER}": float(table["normalised"].median()),
        f"flagged_{TARGET_LAYER}": float(table["flagged"].mean()),
        "drop_cell_hidden": float(table["drop_cell_occluded"].median()),
        "drop_context_hidden": float(table["drop_context_occluded"].median()),
        "context_matters_more": float(np.mean(table["drop_context_occluded"] > table["drop_cell_occluded"])),
    }
    for name in CLASS_NAMES:  # per predicted class: a class marked by the absence of a feature shows no drop
        part = table[table["predicted_class"] == name]
        row[f"drop_cell_hidden_{name}"] = float(part["drop_cell_occluded"].median()) if len(part) else None
        row[f"drop_context_hidden_{name}"] = float(part["drop_context_occluded"].median()) if len(part) else None
    for layer in LAYERS[1:]:
        other = audit_fields(bundle, held_out, AuditSettings(target_layer=layer, device="cpu"))
        row[f"gradcamo_{layer}"] = float(other["gradcamo"].median())
    if args.verdict:  # the audit's verdict on the same held-out fields (audit/verdict.py), as a user would get it
        from napari_gradcamo.audit.verdict import judge_fields

        report = judge_fields(bundle, [(f.image, f.labels) for f in held_out],
                              true_classes=[[CLASS_NAMES[f.treatment]] * f.n_cells for f in held_out], seed=seed,
                              settings=AuditSettings(device="cpu"))
        row["verdict"] = report.verdict
        row["verdict_by_class"] = {c: v.verdict for c, v in report.classes.items()}
        row["verdict_layer"] = report.layer
    return row


def verdict_markdown(results: pd.DataFrame) -> str:
    """Every run's verdict (runs made with ``--verdict``)."""
    rows = ["| data | regulariser | seed | held-out accuracy | verdict (per class) |", "|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(REGULARIZERS)}
    results = results.assign(_order=results["regularizer"].map(order)).sort_values(["data", "_order", "seed"])
    for _, r in results.iterrows():
        if not isinstance(r.get("verdict"), str):
            continue
        by_class = "; ".join(f"{c}: {v}" for c, v in r["verdict_by_class"].items())
        rows.append(f"| {r['data']} | {r['regularizer']} | {int(r['seed'])} | {r['accuracy']:.2f} | "
                    f"{r['verdict']} ({by_class}) |")
    return "\n".join(rows)


def fmt(value, spec=".2f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)


COLUMNS = [("accuracy", "held-out accuracy", ".2f"), (f"gradcamo_{TARGET_LAYER}", f"median Grad-CAMO {TARGET_LAYER}", ".3f"),
           ("gradcamo_stage2", "median Grad-CAMO stage2", ".3f"), (f"flagged_{TARGET_LAYER}", "flagged", ".2f"),
           ("drop_cell_hidden_treated", "drop, cell hidden (treated)", ".3f"),
           ("drop_context_hidden_treated", "drop, context hidden (treated)", ".3f"),
           ("drop_cell_hidden_control", "drop, cell hidden (control)", ".3f"),
           ("drop_context_hidden_control", "drop, context hidden (control)", ".3f")]


def table_markdown(results: pd.DataFrame) -> str:
    """Mean ± s.d. per data set and regulariser, then every run."""
    head = "| data | regulariser | runs | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "---|" * (3 + len(COLUMNS))
    rows = ["Mean ± s.d. over seeds (every run below):", "", head, rule]
    order = {name: i for i, name in enumerate(REGULARIZERS)}
    results = results.assign(_order=results["regularizer"].map(order)).sort_values(["data", "_order", "seed"])
    for (data, _), part in results.groupby(["data", "_order"], sort=False):
        cells = [f"{fmt(part[c].mean(), s)} ± {fmt(part[c].std(ddof=0), s)}" for c, _, s in COLUMNS]
        rows.append(f"| {data} | {part['regularizer'].iloc[0]} | {len(part)} | " + " | ".join(cells) + " |")
    rows += ["", "Every run:", "", head.replace("| runs |", "| seed |"), rule]
    for _, r in results.iterrows():
        rows.append(f"| {r['data']} | {r['regularizer']} | {int(r['seed'])} | "
                    + " | ".join(fmt(r[c], s) for c, _, s in COLUMNS) + " |")
    return "\n".join(rows)


def missing_runs(results: pd.DataFrame, data_sets, seeds, regularizers) -> list[str]:
    done = {(r["data"], int(r["seed"]), r["regularizer"]) for _, r in results.iterrows()} if len(results) else set()
    return [f"{d} seed {s} {g}" for d in data_sets for s in seeds for g in regularizers if (d, s, g) not in done]


def read_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", choices=tuple(DATA), default=list(DATA))
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--regularizers", nargs="+", choices=REGULARIZERS, default=list(REGULARIZERS))
    p.add_argument("--weight", type=float, default=10.0, help="λ of the outside-gradient penalty")
    p.add_argument("--fields", type=int, default=16, help="training fields (4 sites per well)")
    p.add_argument("--eval-fields", type=int, default=8, help="held-out fields from unseen wells")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="append each finished run as a JSON line (runs already there are skipped)")
    p.add_argument("--write", default=None, help="write the set-up, command and tables (markdown) into this file, "
                   "between its regularizer-table markers when it has them (docs/regularizer.md)")
    p.add_argument("--from-json", default=None, help="render the tables from a --json file without training")
    p.add_argument("--verdict", action="store_true", help="also run the audit's verdict (audit/verdict.py) on the "
                   "held-out fields of every run and print a table of them")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = read_runs(Path(args.from_json or args.json)) if (args.from_json or args.json) else []
    done = {(r["data"], r["seed"], r["regularizer"]) for r in results}
    # regulariser by regulariser (the plain runs first), so an interrupted command leaves whole columns
    for regularizer in [] if args.from_json else args.regularizers:
        for data_name in args.data:
            for seed in args.seeds:
                if (data_name, seed, regularizer) in done:
                    continue
                scenario = DATA[data_name]
                train = crops_from_fields(scenario_fields(scenario, seed, args.fields), CROP_SHAPE)
                held_out = scenario_fields(scenario, 100 + seed, args.eval_fields, first_well=20)
                r = run(data_name, seed, regularizer, args, train, held_out)
                results.append(r)
                print(json.dumps(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    table = pd.DataFrame(results)
    md = table_markdown(table)
    missing = missing_runs(table, args.data, args.seeds, args.regularizers)
    print(md)
    if missing:
        print(f"not run: {', '.join(missing)}")
    if "verdict" in table:
        print(verdict_markdown(table))
    if args.write:
        command = "PYTHONPATH=src python scripts/regularizer_experiment.py " + " ".join(
            [f"--seeds {' '.join(map(str, args.seeds))}"]
            + [f"--{k} {getattr(args, k.replace('-', '_'))}" for k in ("weight", "fields", "eval-fields", "epochs", "width")
               if getattr(args, k.replace("-", "_")) != p.get_default(k.replace("-", "_"))]
            + ["--json docs/results/regularizer_runs.jsonl", "--write", shlex.quote(args.write)])
        note = NOTE.format(table=md, command=command, epochs=args.epochs, fields=args.fields,
                           eval_fields=args.eval_fields, width=args.width, weight=args.weight,
                           missing=("Not run: " + ", ".join(missing) + ".") if missing else "Every planned run finished.")
        write_block(Path(args.write), note)
    return 0


START, END = "<!-- regularizer-table:start -->", "<!-- regularizer-table:end -->"


def write_block(path: Path, note: str) -> None:
    """Replace the text between the START and END markers of ``path`` (the hand-written reading around them
    stays); a file without the markers is written whole."""
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = f"{before}{START}\n{note.strip()}\n{END}{after}"
    else:
        text = note
    path.write_text(text)


NOTE = """Written by `scripts/regularizer_experiment.py` (between the markers; the reading around it is by hand).

- Data: synthetic 3D fields (5 stains, 12×64×64). `honest`: the cells carry the class, the medium is clean.
  `no-signal`: every cell looks like a control and a stripe texture in the medium carries the class.
- Training: {fields} fields, small 3D CNN (width {width}), 8×32×32 crops, {epochs} epochs, AdamW + one-cycle
  LR, batch 16; per seed the same data, initial weights and augmentation draws for every regulariser.
  `outside-gradient`: λ = {weight:g}; `context`: context randomisation with probability 1; `both`: the two.
- Held out: {eval_fields} fields from unseen wells of the same data set; Grad-CAM (predicted class) at `stage1`
  (the audited layer) and `stage2`; flagged = normalised Grad-CAMO < 0 at `stage1`; occlusion drops = median
  drop of the predicted class's probability with the cell / the context replaced by background.

```
{command}
```

{missing}

{table}
"""


if __name__ == "__main__":
    sys.exit(main())
