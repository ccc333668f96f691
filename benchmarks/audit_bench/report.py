"""Summaries, goals and the printed report."""

from __future__ import annotations

import json

from audit_bench.config import B0, CROP, REPORT_N, SMALL
from audit_bench.measure import drift, linear_fit


def summarise(runs: list[dict], speedups: list[dict] | None = None) -> dict:
    by = {}
    for r in runs:
        if "error" not in r:
            by.setdefault((r["model"], r["method"]), {})[r["n"]] = r
    trials = {sp.get("model"): sp for sp in speedups or [] if "error" not in sp}
    summary = {}
    for model in (SMALL, B0):
        ours = by.get((model, "ours"), {})
        fwd = by.get((model, "forward"), {})
        floor = by.get((model, "floor"), {})
        base = by.get((model, "baseline"), {})
        if not ours:
            continue
        s: dict = {"ratios": {}}
        for n in sorted(set(ours) | set(fwd) | set(base)):
            row = {}
            if n in ours and n in floor:
                row["ours/floor"] = ours[n]["total_s"] / floor[n]["total_s"]
            if n in ours:
                p = ours[n]["parts_s"]
                row["crops+scoring share"] = (p.get("crops", 0.0) + p.get("scoring", 0.0)) / ours[n]["total_s"]
            if n in ours and n in fwd:
                row["ours/fwd"] = ours[n]["total_s"] / fwd[n]["total_s"]
                row["ours/fwd best batch"] = ours[n]["best_batch_s_per_cell"] / fwd[n]["best_batch_s_per_cell"]
                row["ours cam / fwd model"] = ours[n]["parts_s"]["cam"] / fwd[n]["parts_s"]["model"]
            if n in ours and n in base:
                row["baseline/ours"] = base[n]["total_s"] / ours[n]["total_s"]
                row["baseline cam / ours cam"] = base[n]["parts_s"]["cam"] / ours[n]["parts_s"]["cam"]
            if row:
                s["ratios"][n] = row
        paired = trials.get(model, {}).get("paired_ratios", {})
        if paired:
            s["paired_engine_over_forward"] = paired["engine split / forward cl"]
        for name, runs_by_n in (("ours", ours), ("forward", fwd), ("baseline", base)):
            ns = sorted(runs_by_n)
            fit = linear_fit(ns, [runs_by_n[n]["total_s"] for n in ns])
            if fit:
                fit["s_per_cell_min_max"] = [min(runs_by_n[n]["s_per_cell"] for n in ns), max(runs_by_n[n]["s_per_cell"] for n in ns)]
                s.setdefault("linearity", {})[name] = fit
        lin = s.get("linearity", {})
        if "ours" in lin and "forward" in lin:
            s["marginal_ours_over_forward"] = lin["ours"]["slope_s_per_cell"] / lin["forward"]["slope_s_per_cell"]
        nmax = max(ours)
        s["drift_largest_n"] = {"n": nmax, "last_over_first_quarter": drift(ours[nmax]["batch_s"])}
        ns = sorted(ours)
        s["memory"] = {str(n): {"peak_mb": ours[n]["peak_rss_mb"], "above_start_mb": ours[n]["peak_rss_mb"] - ours[n]["rss_before_mb"]} for n in ns}
        if len(ns) >= 2:
            pair = (64, 256) if 64 in ours and 256 in ours else (ns[-2], ns[-1])
            s["memory_ratio"] = {"n": list(pair), "peak": ours[pair[1]]["peak_rss_mb"] / ours[pair[0]]["peak_rss_mb"]}
        # extrapolate to the N where they were not measured (linear fit, or one point's s/cell)
        extra = {}
        for name, runs_by_n in (("ours", ours), ("forward", fwd), ("baseline", base)):
            fit = lin.get(name)
            for n in REPORT_N:
                if n in runs_by_n or not runs_by_n:
                    continue
                if fit:
                    extra.setdefault(name, {})[n] = fit["intercept_s"] + fit["slope_s_per_cell"] * n
                else:
                    extra.setdefault(name, {})[n] = runs_by_n[max(runs_by_n)]["s_per_cell"] * n
        s["extrapolated_total_s"] = extra
        summary[model] = s
    return summary


def goals(summary: dict) -> dict:
    """Verdicts on the issue's goals from measured numbers only (the largest N measured for both sides)."""
    out = {}
    for model, s in summary.items():
        g = {}
        rat = s["ratios"]
        both = [n for n, v in rat.items() if "ours/fwd" in v]
        at_floor = [n for n, v in rat.items() if "ours/floor" in v]
        if at_floor:
            n = max(at_floor)
            g["ours <= 1.15 x floor (forward + backward to the layer)"] = {"n": n, "ratio": rat[n]["ours/floor"],
                                                                            "met": rat[n]["ours/floor"] <= 1.15}
        shares = [n for n, v in rat.items() if "crops+scoring share" in v]
        if shares:
            n = max(shares)
            g["crops + normalisation + scoring <= 10 % of ours"] = {"n": n, "share": rat[n]["crops+scoring share"],
                                                                    "met": rat[n]["crops+scoring share"] <= 0.10}
        if both:
            n = max(both)
            g["ours <= 1.15 x forward"] = {"n": n, "ratio": rat[n]["ours/fwd"], "best_batch": rat[n]["ours/fwd best batch"],
                                           "marginal": s.get("marginal_ours_over_forward"),
                                           "paired": s.get("paired_engine_over_forward"),
                                           "met": rat[n]["ours/fwd"] <= 1.15}
        with_base = [n for n, v in rat.items() if "baseline/ours" in v]
        if with_base:
            worst = min(rat[n]["baseline/ours"] for n in with_base)
            g["baseline / ours >= 5"] = {"n": with_base, "worst": worst, "met": worst >= 5}
        mem = s.get("memory_ratio")
        if mem:
            g[f"peak memory N={mem['n'][1]} <= 1.2 x N={mem['n'][0]}"] = {"ratio": mem["peak"], "met": mem["peak"] <= 1.2}
        lin = s.get("linearity", {}).get("ours")
        if lin and lin["points"] >= 3:
            drift = s["drift_largest_n"]["last_over_first_quarter"]
            ok = lin["r2"] >= 0.99 and lin["max_residual_of_largest"] <= 0.05 and (drift is None or 0.85 <= drift <= 1.15)
            g["cost linear in N"] = {"r2": lin["r2"], "max_residual_of_largest": lin["max_residual_of_largest"],
                                     "points": lin["points"], "drift": drift, "met": ok}
        elif lin:
            g["cost linear in N"] = {"points": lin["points"], "met": False, "note": "fewer than 3 N measured"}
        out[model] = g
    return out


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def print_report(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(f"command: {report['command']}")
    lines.append(f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} ({m['cpu_capability']}), "
                 f"{report['threads']} threads, batch {report['batch']}, mode {report['mode']}")
    lines.append(f"data: {report['data']['cells']} cells, image C×Z×Y×X {report['data']['shape_czyx']}, crops {list(CROP)}")
    loads = [r["load_avg_before"] for r in report["runs"] if "load_avg_before" in r]
    lines.append(f"load average (1 min) at start {report['load_start']:.2f}, end {report['load_end']:.2f}, "
                 f"max before a configuration {max(loads, default=float('nan')):.2f}; wall {report['wall_s']:.0f} s")
    if loads and max(loads) > (m.get("logical_cpus") or 1) + 0.75:  # the benchmark itself keeps `threads` busy
        lines.append("WARNING: other processes were using the CPUs during this run; timings are inflated (several-fold "
                     "under heavy load) and ratios noisy. Rerun on an idle machine for figures to publish.")
    lines.append("")
    hdr = (f"{'model':15} {'method':9} {'N':>4} {'total s':>8} {'s/cell':>7} {'best':>6} {'prep s':>6} {'crops':>6} "
           f"{'cam/mdl':>7} {'score':>6} {'peak MB':>8} {'+MB':>6} {'load':>5}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"{r.get('model',''):15} {r.get('method',''):9} {r.get('n',''):>4} ERROR {r['error'][:200]}")
            continue
        p, n = r["parts_s"], r["n"]
        camlike = p.get("cam", p.get("model"))
        lines.append(
            f"{r['model']:15} {r['method']:9} {n:>4} {r['total_s']:8.2f} {r['s_per_cell']:7.3f} {r['best_batch_s_per_cell']:6.3f} "
            f"{p.get('prepare', 0):6.2f} {p.get('crops', 0) / n:6.3f} {camlike / n:7.3f} {p.get('scoring', 0) / n:6.3f} "
            f"{r['peak_rss_mb']:8.0f} {r['peak_rss_mb'] - r['rss_before_mb']:6.0f} {r['load_avg_before']:5.2f}"
        )
    for sk in report.get("skipped", []):
        lines.append(f"{sk['model']:15} {sk['method']:9} {sk['n']:>4} skipped: {sk['reason']}")
    lines.append("s/cell = total/N; best = fastest batch / batch size; prep = cell table (+ target-layer search) per run;")
    lines.append("crops (+ normalisation), cam/mdl (ours, baseline: CAM incl. upsampling; forward: model), score: s/cell;")
    lines.append("peak MB = max RSS of the configuration's own process; +MB = peak above the RSS when its timed loop began")
    for model, s in report["summary"].items():
        lines.append("")
        lines.append(f"{model}:")
        for n, row in s["ratios"].items():
            lines.append("  N=%-4s " % n + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
        if s.get("paired_engine_over_forward"):
            lines.append(f"  paired (one process, same batch, interleaved, median of rounds): engine / forward "
                         f"{s['paired_engine_over_forward']:.2f}")
        for name, fit in s.get("linearity", {}).items():
            lines.append(f"  linear fit {name:9}: {fit['slope_s_per_cell']:.3f} s/cell + {fit['intercept_s']:.2f} s, "
                         f"R² {fit['r2']:.4f}, max residual {100 * fit['max_residual_of_largest']:.1f}% of the largest "
                         f"total ({fit['points']} N)")
        if s.get("marginal_ours_over_forward"):
            lines.append(f"  marginal cost ours / forward (fit slopes): {s['marginal_ours_over_forward']:.2f}")
        d = s.get("drift_largest_n")
        if d and d["last_over_first_quarter"]:
            lines.append(f"  ours N={d['n']}: last/first quarter batch time {d['last_over_first_quarter']:.2f}")
        for name, ex in s.get("extrapolated_total_s", {}).items():
            lines.append(f"  extrapolated {name:9}: " + ", ".join(f"N={n}: {t:.0f} s" for n, t in ex.items()))
        for goal, v in report["goals"].get(model, {}).items():
            vals = ", ".join(f"{k} {_fmt(x, 3)}" for k, x in v.items() if k != "met")
            lines.append(f"  goal {goal}: {'MET' if v['met'] else 'NOT MET'} ({vals})")
    lines.append("")
    lines.append("map check (engine maps through pytorch-grad-cam's post-processing vs the library's own output):")
    for mc in report.get("mapcheck", []):
        if "error" in mc:
            lines.append(f"  {mc.get('model')}: ERROR {mc['error'][:200]}")
        else:
            lines.append(f"  {mc['model']:15} layer {mc['layer']}: max abs diff {mc['max_abs_diff']:.2e} "
                         f"(tolerance {mc['tolerance']:.0e}) {'ok' if mc['ok'] else 'MISMATCH'}")
    lines.append("")
    lines.append("speed-ups (one batch of real crops; variants interleaved round by round; ratios = median of rounds):")
    for sp in report["speedups"]:
        if "error" in sp:
            lines.append(f"  {sp.get('model')}: ERROR {sp['error'][:200]}")
            continue
        lines.append(f"  {sp['model']:15} best s/cell: " + ", ".join(f"{k} {v:.3f}" for k, v in sp["per_cell_best_s"].items()))
        for name, t in sp["trials"].items():
            lines.append(f"  {sp['model']:15} {name:22} " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()}))
    lines.append("")
    lines.append("interactive (ms, median / max):")
    for k, v in list(report["interactive"].items()) + [("qt " + k, v) for k, v in report.get("qt", {}).items()]:
        if isinstance(v, (list, tuple)):
            lines.append(f"  {k:32} {v[0]:8.1f} / {v[1]:8.1f}")
        else:
            lines.append(f"  {k:32} {v}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
