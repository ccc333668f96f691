"""One configuration (model × method × N cells) in a fresh process: forward floor, pytorch-grad-cam baseline, ours."""

from __future__ import annotations

import time
from pathlib import Path

from audit_bench.measure import cpu_seconds, peak_rss_mb, rss_mb, set_threads
from audit_bench.workloads import batches, load, make_bundle, prepared_crops, score_all, timed_cells


def worker(cfg: dict) -> dict:
    import numpy as np
    import torch

    set_threads(cfg["threads"])
    from napari_gradcamo.audit import batch as batch_mod
    from napari_gradcamo.audit import run as audit_mod
    from napari_gradcamo.audit.cam import CamEngine
    from napari_gradcamo.audit.run import AuditSettings, iter_audit, prepare

    image, labels = load(Path(cfg["data"]))
    bundle = make_bundle(cfg["model"])
    meta, model = bundle.metadata, bundle.model
    settings = AuditSettings(batch_size=cfg["batch"], device="cpu")
    model_image, layer, cells = prepare(image, labels, bundle, settings)
    n = cfg["n"]
    cells = cells[:n]
    wanted = [c.label for c in cells]
    method = cfg["method"]
    parts: dict[str, float] = {}
    batch_times: list[float] = []
    out: dict = {"model": cfg["model"], "method": method, "n": n, "batch": cfg["batch"], "layer": layer}

    def add(key, dt):
        parts[key] = parts.get(key, 0.0) + dt

    if method in ("forward", "forward-plain"):
        if method == "forward":
            model.to(memory_format=torch.channels_last_3d)

        def run(chunk, timed=True):
            t0 = time.perf_counter()
            crops, batch = prepared_crops(model_image, labels, chunk, meta)
            t1 = time.perf_counter()
            x = torch.from_numpy(batch)
            if method == "forward":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.inference_mode():
                probs = torch.softmax(model(x), 1)
            t2 = time.perf_counter()
            if timed:
                add("crops", t1 - t0)
                add("model", t2 - t1)
                batch_times.append(t2 - t0)
            return probs

        run(cells[: cfg["batch"]], timed=False)  # warm-up (oneDNN primitives, allocator)
        rss0 = rss_mb()
        t0 = time.perf_counter()
        cells = timed_cells(labels, wanted, add)
        for chunk in batches(cells, cfg["batch"]):
            run(chunk)
        total = time.perf_counter() - t0

    elif method == "floor":
        # The arithmetic no audit can avoid: forward + backward from the explained logit to the target layer's
        # output only (weights frozen), on ready tensors (no crops, no normalisation, no CAM, no scoring), in
        # the engine's layout. The audit's goal is measured against this, not against a forward pass alone.
        model.requires_grad_(False)
        model.to(memory_format=torch.channels_last_3d)
        store = {}

        def reroot(module, inputs, output):
            store["a"] = output.detach().requires_grad_(True)
            return store["a"]

        hook = model.get_submodule(layer).register_forward_hook(reroot)
        ready = [torch.from_numpy(prepared_crops(model_image, labels, chunk, meta)[1]).contiguous(
            memory_format=torch.channels_last_3d) for chunk in batches(cells, cfg["batch"])]

        def run(x, timed=True):
            t0 = time.perf_counter()
            logits = model(x)
            chosen = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            torch.autograd.grad(chosen, store["a"])
            if timed:
                add("model", time.perf_counter() - t0)
                batch_times.append(time.perf_counter() - t0)

        run(ready[0], timed=False)
        rss0 = rss_mb()
        t0 = time.perf_counter()
        for x in ready:
            run(x)
        total = time.perf_counter() - t0
        hook.remove()

    elif method == "baseline":
        from pytorch_grad_cam import GradCAM

        target_layers = [model.get_submodule(layer)]
        with GradCAM(model=model, target_layers=target_layers) as cam:

            def run(chunk, timed=True):
                t0 = time.perf_counter()
                crops, batch = prepared_crops(model_image, labels, chunk, meta)
                t1 = time.perf_counter()
                input_tensor = torch.from_numpy(batch)
                if timed:
                    grayscale_cam = cam(input_tensor=input_tensor, targets=None)
                else:  # warm up the forward path only (a full warm-up would double this slow config)
                    with torch.no_grad():
                        model(input_tensor)
                    return None
                t2 = time.perf_counter()
                scores = score_all(grayscale_cam, crops)
                t3 = time.perf_counter()
                add("crops", t1 - t0)
                add("cam", t2 - t1)
                add("scoring", t3 - t2)
                batch_times.append(t3 - t0)
                return scores

            run(cells[: cfg["batch"]], timed=False)
            rss0 = rss_mb()
            t0 = time.perf_counter()
            cells = timed_cells(labels, wanted, add)
            for chunk in batches(cells, cfg["batch"]):
                run(chunk)
            total = time.perf_counter() - t0

    elif method == "ours":
        CamEngine.channels_last = bool(cfg.get("channels_last", True))
        # Time the parts of iter_audit by wrapping the functions it calls (negligible overhead).
        originals = {}

        def wrap(obj, name, key):
            fn = getattr(obj, name)
            originals[(obj, name)] = fn

            def timed(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    add(key, time.perf_counter() - t)

            setattr(obj, name, timed)

        wrap(audit_mod, "extract_crop", "crops")
        wrap(batch_mod, "normalize_crops", "crops")
        wrap(CamEngine, "compute", "cam")
        wrap(batch_mod, "upsample", "cam")
        wrap(batch_mod, "score_cam", "scoring")
        wrap(audit_mod, "cell_rows", "scoring")
        wrap(audit_mod, "prepare", "prepare")

        for _ in iter_audit(image, labels, bundle, settings, only_labels=wanted[: cfg["batch"]]):
            pass  # warm-up
        parts.clear()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        last = t0
        rows = []
        for batch in iter_audit(image, labels, bundle, settings, only_labels=wanted):
            now = time.perf_counter()
            batch_times.append(now - last)
            last = now
            rows.append(batch.rows)
        total = time.perf_counter() - t0
        for (obj, name), fn in originals.items():
            setattr(obj, name, fn)
        import pandas as pd

        table = pd.concat(rows, ignore_index=True)
        out["gradcamo_median"] = float(np.nanmedian(table["gradcamo"])) if table["gradcamo"].notna().any() else None
        out["gradcamo_undefined"] = int(table["gradcamo"].isna().sum())
        parts["other"] = max(0.0, total - sum(parts.values()))
    else:
        raise ValueError(method)

    if method == "ours" and batch_times:
        batch_times[0] -= parts.get("prepare", 0.0)  # the first batch also waited for the cell table
    steady = batch_times
    out.update(
        total_s=total,
        s_per_cell=total / n,
        best_batch_s_per_cell=min(steady) / cfg["batch"] if steady else None,
        parts_s=parts,
        batch_s=batch_times,
        rss_before_mb=rss0,
        peak_rss_mb=peak_rss_mb(),
        cpu_s=cpu_seconds(),
    )
    return out


def everywhere_class():
    from napari_gradcamo.audit.cam import CamEngine

    class ChannelsLastEverywhere(CamEngine):
        """The engine with channels-last-3D after the target layer too (for comparison only)."""

        def _reroot(self, module, inputs, output):
            return output.detach().requires_grad_(True)

    return ChannelsLastEverywhere
