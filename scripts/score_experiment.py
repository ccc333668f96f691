"""Honest vs shortcut models on two confounds (background stripes, medium debris), every layer, several seeds.

Prints one JSON line per (seed, model, layer) and writes docs/scores_*.png. Usage (≈4 min per seed on 2 cores):
    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/score_experiment.py --seeds 1 2 3 --out docs/results/score_runs.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_gradcamo.audit.batch import batch_of
from napari_gradcamo.audit.layer_sweep import plot_sweep
from napari_gradcamo.audit.sanity import cascading_randomisation
from napari_gradcamo.crops.extract import cell_table, extract_crop
from napari_gradcamo.synthetic.experiment import train_scenario
from napari_gradcamo.synthetic.score_study import (
    CONFOUND_SCENARIOS,
    held_out_fields,
    layer_tables,
    occlusion_table,
    rule_layer,
    separation_auc,
)


def sanity(bundle, field, layer):
    cells = cell_table(field.labels)[:24]
    crops = batch_of([extract_crop(field.image, field.labels, c, bundle.metadata.crop_shape) for c in cells])
    return cascading_randomisation(bundle.model, crops, bundle.metadata.normalization, layer).as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="docs/results/score_runs.jsonl")
    parser.add_argument("--figures", default="docs")
    args = parser.parse_args()
    out = Path(args.out)
    lines = []
    for seed in args.seeds:
        models = {name: train_scenario(name, seed=seed) for name in ("honest", *CONFOUND_SCENARIOS.values())}
        fields = {name: held_out_fields(name, seed) for name in models}
        tables = {name: layer_tables(models[name], fields[name]) for name in models}
        for name, bundle in models.items():
            chosen, drops = rule_layer(bundle, name, seed)
            occ = occlusion_table(bundle, fields[name], chosen)
            record = {"seed": seed, "model": name, "rule_layer": chosen, "deletion_drop": drops,
                      "train_accuracy": bundle.metadata.training["final_accuracy"],
                      "held_out_accuracy": float((tables[name][chosen]["predicted_class"]
                                                  == tables[name][chosen]["true_class"]).mean()),
                      "drop_cell_occluded": float(occ["drop_cell_occluded"].median()),
                      "drop_context_occluded": float(occ["drop_context_occluded"].median()),
                      "sanity": {layer: sanity(bundle, fields[name][0], layer) for layer in tables[name]},
                      "layers": {layer: {k: float(t[k].median()) for k in ("gradcamo", "chance", "lift", "normalised")}
                                 for layer, t in tables[name].items()}}
            lines.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "sanity"}), flush=True)
        for confound, name in CONFOUND_SCENARIOS.items():
            auc = {layer: {score: separation_auc(tables["honest"][layer][score], tables[name][layer][score])
                           for score in ("gradcamo", "lift", "normalised")} for layer in tables[name]}
            lines.append({"seed": seed, "confound": confound, "auc": auc})
            print(json.dumps(lines[-1]), flush=True)
            if seed == args.seeds[0]:
                plot_sweep(tables[name], Path(args.figures) / f"scores_{confound}_{name}_seed{seed}.png",
                           "normalised", title=f"{name} model, seed {seed}: normalised score per layer")
        if seed == args.seeds[0]:
            plot_sweep(tables["honest"], Path(args.figures) / f"scores_honest_seed{seed}.png",
                       "normalised", title=f"honest model, seed {seed}: normalised score per layer")
        out.write_text("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    main()
