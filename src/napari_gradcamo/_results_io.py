"""npe2 reader and writer for a saved audit (:mod:`napari_gradcamo.output.results_folder`); no Qt.

Reading gives one image layer per stain and the masks as a Labels layer whose ``features`` is the
per-cell table and whose metadata carries the per-cell Grad-CAM maps, the model name and the run
record: pick that layer in the audit dock and the table, colours and maps are back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gradcamo.output.results_folder import (
    ResultsFolder,
    is_results_folder,
    read_results_folder,
    write_results_folder,
)

CAMS_KEY = "gradcamo_cams"
MODEL_KEY = "gradcamo_model"
RUN_KEY = "gradcamo_run"
#: The flag rule the audit was saved under (``{"on": score, "threshold": value}``); the audit dock applies it
FLAG_RULE_KEY = "gradcamo_flag_rule"


def get_reader(path):
    """npe2 reader hook: a function for a results folder, None for anything else."""
    if isinstance(path, list):
        path = path[0] if len(path) == 1 else None
    return read_results if path is not None and is_results_folder(path) else None


def read_results(path) -> list[tuple]:
    if isinstance(path, list):
        path = path[0]
    from napari_gradcamo._sample_data import STAIN_COLORMAPS

    saved = read_results_folder(path)
    scale = tuple(saved.voxel_size)
    layers = [
        (saved.image[i], {"name": name, "scale": scale, "blending": "additive",
                          "colormap": STAIN_COLORMAPS.get(name, "gray"),
                          "metadata": {"gradcamo_channel": name}}, "image")
        for i, name in enumerate(saved.channel_names)
    ]
    layers.append((saved.labels, {
        "name": f"{Path(path).name} masks", "scale": scale, "opacity": 0.45, "features": saved.table,
        "metadata": {CAMS_KEY: saved.cams, MODEL_KEY: saved.model, RUN_KEY: saved.run_record,
                     FLAG_RULE_KEY: saved.flag_rule},
    }, "labels"))
    return layers


def write_results(path: str, layer_data: list[tuple]) -> list[str]:
    """npe2 writer: image layers (one per stain, or one C×Z×Y×X) + one Labels layer → a results folder."""
    import pandas as pd

    images = [(d, m) for d, m, kind in layer_data if kind == "image"]
    labels = [(d, m) for d, m, kind in layer_data if kind == "labels"]
    if len(labels) != 1 or not images:
        raise ValueError("Select the stain image layers and exactly one Labels layer to save an audit.")
    mask, meta = labels[0]
    if len(images) == 1 and np.ndim(images[0][0]) == 4:
        stack = np.asarray(images[0][0])
        names = list(images[0][1].get("metadata", {}).get("channel_names") or [f"ch{i}" for i in range(len(stack))])
    else:
        stack = np.stack([np.asarray(d) for d, _ in images])
        names = [str(m.get("metadata", {}).get("gradcamo_channel") or m.get("name")) for _, m in images]
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask, stack = mask[None], stack[:, None]
    scale = tuple(float(s) for s in meta.get("scale", (1.0, 1.0, 1.0)))[-3:]
    if len(scale) < 3:
        scale = (1.0, *scale)
    features = meta.get("features")
    table = features if isinstance(features, pd.DataFrame) else pd.DataFrame({"label": pd.Series(dtype="int64")})
    extra = meta.get("metadata", {}) or {}
    saved = ResultsFolder(stack, names, scale, mask, table, dict(extra.get(CAMS_KEY) or {}),
                          str(extra.get(MODEL_KEY) or ""), extra.get(RUN_KEY), extra.get(FLAG_RULE_KEY))
    return [str(write_results_folder(path, saved, overwrite=False))]
