#!/usr/bin/env python
"""Benchmarks of the Grad-CAM audit (issue 5): our engine against forward-only inference and against
pytorch-grad-cam used as its README shows, plus the plugin's interactive figures and CPU speed-ups.

    python benchmarks/run.py            # full run (< 15 min on 2 CPU cores)
    python benchmarks/run.py --quick    # smoke run (~3 min)

Every configuration (model × method × N cells) runs in a fresh subprocess, so that its peak memory
(``getrusage`` max RSS, exact, torch allocations included) is its own. Inputs are seeded: a synthetic 3D
Cell Painting field (5 stains, real label image, real crop extraction), seeded untrained weights.
Numbers are printed and written as JSON to ``benchmarks/results/``; nothing is asserted.

Methods
  forward   crops → normalise → model forward under ``torch.inference_mode`` in the same memory layout as
            our engine uses (the floor). ``forward-plain`` is the same in PyTorch's default layout.
  baseline  crops → normalise → ``GradCAM(model=model, target_layers=[layer])(input_tensor=x, targets=None)``
            per batch (the README's usage: gradients into every weight, min-max normalised maps, scipy zoom)
            → the same Grad-CAMO scoring on its maps.
  ours      ``iter_audit`` end to end (cell table, crops, normalisation, CAM, trilinear upsampling, scoring,
            result rows), timed by parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from audit_bench.check import mapcheck
from audit_bench.config import B0, BATCH, PLANS, RESULTS, SMALL, THREADS
from audit_bench.interactive import interactive, qt_command, qt_figures
from audit_bench.measure import bf16_hardware, load_avg, machine, run_child, set_threads
from audit_bench.methods import worker
from audit_bench.report import goals, print_report, summarise
from audit_bench.speedups import speedups
from audit_bench.workloads import make_data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 5 min)")
    ap.add_argument("--ci", action="store_true", help="CI gate (~2 min): every method once per model, the map check; "
                    "exit 1 on any error or a map that no longer matches pytorch-grad-cam")
    ap.add_argument("--models", default=f"{SMALL},{B0}")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--compile", action="store_true", help="try torch.compile on the small CNN in --quick mode too")
    ap.add_argument("--bf16", action="store_true", help="also try bf16 autocast (very slow without bf16 hardware)")
    ap.add_argument("--no-qt", action="store_true", help="skip the Qt figures (they need a display or xvfb-run)")
    ap.add_argument("--resummarise", metavar="JSON", help="recompute the summary of a results file and print it")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--speedups", help=argparse.SUPPRESS)
    ap.add_argument("--interactive", help=argparse.SUPPRESS)
    ap.add_argument("--qt", help=argparse.SUPPRESS)
    ap.add_argument("--mapcheck", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for kind, fn in (("worker", worker), ("speedups", speedups), ("interactive", interactive), ("qt", qt_figures),
                     ("mapcheck", mapcheck)):
        cfg = getattr(args, kind)
        if cfg:
            print("RESULT " + json.dumps(fn(json.loads(cfg))), flush=True)
            return 0

    if args.resummarise:
        path = Path(args.resummarise)
        report = json.loads(path.read_text())
        report["summary"] = summarise(report["runs"], report["speedups"])
        report["goals"] = goals(report["summary"])
        text = print_report(report)
        path.write_text(json.dumps(report, indent=1, default=str))
        path.with_suffix(".txt").write_text(text + "\n")
        return 0

    t_start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - t_start  # noqa: E731
    mode = "ci" if args.ci else "quick" if args.quick else "full"
    plan = PLANS[mode]
    models = [m for m in args.models.split(",") if m]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"mode": mode, "threads": args.threads, "batch": args.batch, "load_start": load_avg(),
                    "plan": {k: v for k, v in plan.items()}}
    set_threads(args.threads)
    report["machine"] = machine()
    runs: list[dict] = []
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gradcamo-bench-") as tmp:
        tmp = Path(tmp)
        report["data"] = make_data(tmp, tiles=2 if mode == "full" else 1)
        cells = report["data"]["cells"]
        print(f"data: {cells} cells, C×Z×Y×X {report['data']['shape_czyx']}, made in {report['data']['seconds']:.1f} s", flush=True)
        base = {"data": str(tmp), "threads": args.threads, "batch": args.batch}
        per_cell: dict = {}  # (model, method) → last measured s/cell and process overhead

        def methods_at(model, n):
            out = [m for m in ("forward", "floor", "ours") if n in plan["n"][model]]
            return out + (["baseline"] if n in plan["baseline"].get(model, []) else [])

        def config(model, method, n, forced=False):
            n = min(n, cells)
            if any(r.get("model") == model and r.get("method") == method and r.get("n") == n for r in runs):
                return
            last = per_cell.get((model, method))
            if not forced and last is not None:
                predicted = last[0] * n * 1.1 + last[1]
                reason = None
                if predicted > plan["config_cap_s"]:
                    reason = f"predicted {predicted:.0f} s > the {plan['config_cap_s']:.0f} s cap per configuration"
                elif elapsed() + predicted > plan["deadline_s"]:
                    reason = f"predicted {predicted:.0f} s would pass the {plan['deadline_s'] / 60:.1f} min deadline"
                if reason:
                    skipped.append({"model": model, "method": method, "n": n, "reason": reason})
                    print(f"  {model} {method} N={n}: skipped ({reason})", flush=True)
                    return
            timeout = max(30.0, plan["hard_s"] - elapsed())
            r = run_child("worker", dict(base, model=model, method=method, n=n), timeout=timeout)
            runs.append(r)
            if "error" in r:
                print(f"  {model} {method} N={n}: {r['error'][:300]}", flush=True)
                return
            per_cell[(model, method)] = (r["s_per_cell"], max(0.0, r["process_s"] - r["total_s"]))
            print(f"  {model} {method} N={n}: {r['total_s']:.1f} s, {r['s_per_cell']:.3f} s/cell, "
                  f"peak {r['peak_rss_mb']:.0f} MB (load {r['load_avg_before']:.1f}, {elapsed():.0f} s elapsed)", flush=True)

        # 1. the smallest N of every configuration
        for model in models:
            n0 = min(plan["n"][model])
            for method in methods_at(model, n0):
                config(model, method, n0, forced=True)
        # 2. the map check, speed-up trials, interactive figures, Qt figures
        report["mapcheck"] = [run_child("mapcheck", dict(base, model=model), timeout=300) for model in models]
        for mc in report["mapcheck"]:
            print(f"  map check {mc.get('model')}: " + (f"max |ours - pytorch-grad-cam| {mc['max_abs_diff']:.2e} "
                  f"({'ok' if mc['ok'] else 'MISMATCH'})" if "error" not in mc else "ERROR " + mc["error"][:300]), flush=True)
        sp = []
        for model in models if plan["reps"] else []:
            cfg = dict(base, model=model, reps=plan["reps"], full=not args.quick,
                       compile=model == SMALL and (args.compile or not args.quick),
                       bf16=bool(args.bf16 or bf16_hardware()), bf16_cells=1)
            sp.append(run_child("speedups", cfg, timeout=max(60.0, plan["hard_s"] - elapsed())))
            print(f"  speed-ups {model}: done ({elapsed():.0f} s elapsed)", flush=True)
        report["speedups"] = sp
        report["interactive"] = run_child("interactive", dict(base), timeout=300)
        prefix = qt_command()
        if args.no_qt or not plan["qt"]:
            report["qt"] = {"status": "not measured in this mode" + (" (--no-qt)" if args.no_qt else " (full mode measures it)")}
        elif prefix is None:
            report["qt"] = {"status": "not measured: no display and no xvfb-run"}
        else:
            report["qt"] = run_child("qt", dict(base), timeout=300, prefix=prefix)
        print(f"  interactive and Qt figures: done ({elapsed():.0f} s elapsed)", flush=True)
        # 3. larger N, in increasing order, while the budget allows: forward and ours first, then the baseline
        for n in sorted({n for m in models for n in plan["n"][m]}):
            for model in models:
                for method in methods_at(model, n):
                    if method != "baseline":
                        config(model, method, n)
        for n in sorted({n for m in models for n in plan["baseline"].get(m, [])}):
            for model in models:
                if n in plan["baseline"].get(model, []):
                    config(model, "baseline", n)
    report["runs"] = runs
    report["skipped"] = skipped
    report["summary"] = summarise(runs, report["speedups"])
    report["goals"] = goals(report["summary"])
    report["load_end"] = load_avg()
    report["wall_s"] = elapsed()
    report["command"] = "python benchmarks/run.py" + {"ci": " --ci", "quick": " --quick", "full": ""}[mode]
    failures = [f"{r.get('model')} {r.get('method')} N={r.get('n')}: {r['error'][:200]}" for r in runs if "error" in r]
    failures += [f"speed-ups {sp.get('model')}: {sp['error'][:200]}" for sp in report["speedups"] if "error" in sp]
    failures += [f"map check {mc.get('model')}: " + (mc["error"][:200] if "error" in mc else
                 f"max abs diff {mc['max_abs_diff']:.2e} > {mc['tolerance']:.0e}") for mc in report["mapcheck"]
                 if "error" in mc or not mc["ok"]]
    if "error" in report["interactive"]:
        failures.append("interactive: " + report["interactive"]["error"][:200])
    report["failures"] = failures
    text = print_report(report)
    (out_dir / f"{mode}-latest.json").write_text(json.dumps(report, indent=1, default=str))
    (out_dir / f"{mode}-latest.txt").write_text(text + "\n")
    print(f"\nwritten: {out_dir / f'{mode}-latest.json'}, {out_dir / f'{mode}-latest.txt'}", flush=True)
    if failures:
        print(f"\nBENCHMARK FAILED: {len(failures)} configuration(s) errored or a map no longer matches:", flush=True)
        for f in failures:
            print("  " + f, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
