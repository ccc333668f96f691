"""Paired speed-up trials of the engine's options at identical maps."""

from __future__ import annotations

import time
from pathlib import Path

from audit_bench.measure import peak_rss_mb, set_threads
from audit_bench.methods import everywhere_class
from audit_bench.workloads import load, make_bundle, prepared_crops, score_all


def speedups(cfg: dict) -> dict:
    """Paired measurements on one batch of real crops, variants interleaved round by round (so that other
    load on the machine hits them alike): forward and engine in each memory layout, the engine at a deeper
    layer, 1 vs 2 threads, then torch.compile and bf16 trials."""
    import numpy as np
    import torch

    set_threads(cfg["threads"])
    from napari_gradcamo.audit.cam import CamEngine, upsample
    from napari_gradcamo.audit.run import AuditSettings, prepare
    from napari_gradcamo.models.layers import list_target_layers

    everywhere_cls = everywhere_class()
    image, labels = load(Path(cfg["data"]))
    bundle = make_bundle(cfg["model"])
    meta, model = bundle.metadata, bundle.model
    model_image, layer, cells = prepare(image, labels, bundle, AuditSettings(device="cpu"))
    crops, batch = prepared_crops(model_image, labels, cells[: cfg["batch"]], meta)
    B = len(batch)
    x = torch.from_numpy(batch)
    rounds = cfg["reps"]
    res: dict = {"model": cfg["model"], "batch": B, "layer": layer, "rounds": rounds, "trials": {}}
    cl_fmt, plain_fmt = torch.channels_last_3d, torch.contiguous_format

    def forward(fmt, threads=None):
        def run():
            model.to(memory_format=fmt)
            if threads:
                torch.set_num_threads(threads)
            t = time.perf_counter()
            with torch.inference_mode():  # the layout conversion of the input is timed, as in the engine
                model(x.contiguous(memory_format=fmt))
            dt = time.perf_counter() - t
            torch.set_num_threads(cfg["threads"])
            model.to(memory_format=plain_fmt)
            return dt, None
        return run

    def engine(channels_last=True, cls=CamEngine, at=None, mdl=None, autocast=False, count=None):
        sub = slice(None) if count is None else slice(0, count)

        def run():
            e = cls(mdl or model, at or layer, "gradcam", "cpu")
            e.channels_last = channels_last
            with e:
                t = time.perf_counter()
                if autocast:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        out = e.compute(batch[sub])
                else:
                    out = e.compute(batch[sub])
                dt = time.perf_counter() - t
            return dt, out
        return run

    variants = {"forward default": forward(plain_fmt), "forward cl": forward(cl_fmt),
                "engine default": engine(False), "engine split": engine(True)}
    if cfg.get("full"):
        variants["engine cl everywhere"] = engine(True, cls=everywhere_cls)
        variants["forward cl 1 thread"] = forward(cl_fmt, threads=1)
    names = list_target_layers(model, meta.crop_shape, len(meta.channel_names))
    shape = {l.name: l.output_shape for l in names}
    deeper = [l.name for l in names[[l.name for l in names].index(layer) + 1:]
              if l.output_shape[2] > 1 and l.output_shape != shape[layer]]
    if deeper:
        variants[f"engine split at {deeper[-1]}"] = engine(True, at=deeper[-1])

    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict = {}
    for r in range(rounds + 1):  # round 0 warms up
        for name, run in variants.items():
            dt, out = run()
            if r:
                times[name].append(dt)
            if out is not None:
                outputs[name] = out
    per_cell = {k: min(v) / B for k, v in times.items()}
    ratio = lambda a, b: float(np.median(np.array(times[a]) / np.array(times[b])))  # noqa: E731
    res["per_cell_best_s"] = per_cell
    res["paired_ratios"] = {
        "engine split / forward cl": ratio("engine split", "forward cl"),
        "engine default / forward default": ratio("engine default", "forward default"),
    }

    def scores(out, sub=slice(None)):
        maps = upsample(out[2], meta.crop_shape)
        return np.array([sc.gradcamo for sc in score_all(maps, crops[sub])])

    def compare(a, b, sub=slice(None)):
        sa, sb = scores(a, sub), scores(b, sub)
        both = np.isfinite(sa) & np.isfinite(sb)
        return {
            "max_abs_gradcamo_change": float(np.max(np.abs(sa[both] - sb[both]))) if both.any() else None,
            "max_rel_map_change": float(np.max(np.abs(a[2] - b[2])) / max(float(np.max(a[2])), 1e-30)),
            "same_targets": bool(np.array_equal(a[1], b[1])),
        }

    t = {
        "forward_speedup": ratio("forward default", "forward cl"),
        "engine_speedup_split": ratio("engine default", "engine split"),
        **compare(outputs["engine default"], outputs["engine split"]),
        "kept": "split: channels-last up to the target layer, default layout after it",
    }
    if "engine cl everywhere" in times:
        t["engine_speedup_everywhere"] = ratio("engine default", "engine cl everywhere")
        t["split_over_everywhere"] = ratio("engine split", "engine cl everywhere")
    res["trials"]["channels_last_3d"] = t
    if "forward cl 1 thread" in times:
        res["trials"]["threads"] = {
            "speedup_2_over_1_thread": ratio("forward cl 1 thread", "forward cl"),
            "interop_threads": torch.get_num_interop_threads(),
            "kept": f"{cfg['threads']} intra-op threads (the caller's setting; the engine does not change it)",
        }
    deep = [k for k in times if k.startswith("engine split at ")]
    if deep:
        res["trials"]["target_layer"] = {
            "layers": [layer, deep[0][len("engine split at "):]],
            "engine_over_forward_cl": [ratio("engine split", "forward cl"), ratio(deep[0], "forward cl")],
            "kept": "the default layer (a choice of method, not of speed)",
        }

    # torch.compile: the whole model cannot be compiled usefully under the engine's hooks (graph breaks),
    # so compile the top-level stages that run before the target layer (works for Sequential models)
    if cfg.get("compile"):
        try:
            import copy

            compiled = copy.deepcopy(model)
            top = layer.split(".")[0]
            children = [n for n, _ in compiled.named_children()]
            for name in children[: children.index(top)]:
                setattr(compiled, name, torch.compile(getattr(compiled, name)))
            run = engine(True, mdl=compiled)
            compile_s, out_c = run()
            ct = [run()[0] for _ in range(max(1, rounds))]
            eager = min(times["engine split"])
            t_part = time.perf_counter()
            engine(True, mdl=compiled, count=max(1, B // 2))()  # a partial last batch: new shape, recompiles
            recompile_s = time.perf_counter() - t_part
            gain = (eager - min(ct)) / B
            res["trials"]["torch_compile_prefix"] = {
                "compiled_modules": children[: children.index(top)],
                "compile_and_first_batch_s": compile_s,
                "partial_batch_recompile_s": recompile_s,
                "engine_s_per_cell_eager_compiled": [eager / B, min(ct) / B],
                "speedup_engine": eager / min(ct),
                "break_even_cells": (compile_s + recompile_s) / gain if gain > 0 else None,
                **compare(outputs["engine split"], out_c),
                "kept": False,
            }
        except Exception as error:  # inductor needs a C++ compiler; report, do not fail the run
            res["trials"]["torch_compile_prefix"] = {"error": f"{type(error).__name__}: {error}"[:300], "kept": False}
    else:
        res["trials"]["torch_compile_prefix"] = {"skipped": "not run for this model/mode", "kept": False}

    # bf16 autocast: only where the CPU has bf16 hardware (else emulated and far slower) or when asked
    if cfg.get("bf16"):
        count = cfg.get("bf16_cells", 1)
        fp_t, fp = engine(True, count=count)()
        bf_t, bf = engine(True, autocast=True, count=count)()
        res["trials"]["bf16_autocast"] = {
            "cells": count,
            "engine_s_per_cell_fp32_bf16": [fp_t / count, bf_t / count],
            "speedup_engine": fp_t / bf_t,
            **compare(fp, bf, slice(0, count)),
            "kept": False,
        }
    else:
        res["trials"]["bf16_autocast"] = {
            "skipped": "CPU without AVX512-BF16/AMX: bf16 is emulated (measured ~160x slower per cell on an AVX2 EPYC, Grad-CAMO change 1.3e-4); --bf16 runs it",
            "kept": False,
        }
    res["peak_rss_mb"] = peak_rss_mb()
    return res
