"""Correctness gate of the benchmark: the engine's maps must still be pytorch-grad-cam's maps.

For one batch of real crops per model, pytorch-grad-cam is called as its README shows and the engine's raw
maps are put through the library's own post-processing (min-max scaling, zoom to the crop, clip, min-max
again); the two must agree. A benchmark that times a wrong map measures nothing, so a mismatch fails the run.
"""

from __future__ import annotations

from pathlib import Path

from audit_bench.measure import set_threads
from audit_bench.workloads import load, make_bundle, prepared_crops

TOLERANCE = 1e-4  # float32 rounding of two different evaluation orders; a real change moves maps by ≫ 1e-2


def mapcheck(cfg: dict) -> dict:
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from napari_gradcamo.audit.cam import CamEngine
    from napari_gradcamo.audit.run import AuditSettings, prepare

    set_threads(cfg["threads"])
    image, labels = load(Path(cfg["data"]))
    bundle = make_bundle(cfg["model"])
    model_image, layer, cells = prepare(image, labels, bundle, AuditSettings(device="cpu"))
    crops, batch = prepared_crops(model_image, labels, cells[: cfg.get("cells", 2)], bundle.metadata)
    with CamEngine(bundle.model, layer, "gradcam", "cpu") as engine:
        _, used, raw = engine.compute(batch, None)
    with GradCAM(model=bundle.model, target_layers=[bundle.model.get_submodule(layer)]) as library:
        documented = library(input_tensor=torch.from_numpy(batch), targets=[ClassifierOutputTarget(int(t)) for t in used])
    ours = scale_cam_image(np.maximum(scale_cam_image(raw, tuple(batch.shape[2:][::-1])), 0))
    diff = float(np.max(np.abs(ours - documented)))
    return {"model": cfg["model"], "layer": layer, "cells": len(crops), "max_abs_diff": diff,
            "tolerance": TOLERANCE, "ok": bool(diff <= TOLERANCE)}
