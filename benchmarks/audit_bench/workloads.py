"""The benchmark workload: a seeded synthetic field, seeded untrained models, crops as the audit cuts them."""

from __future__ import annotations

import time
from pathlib import Path

from audit_bench.config import CHANNELS, CLASSES, CROP


def make_data(directory: Path, tiles: int, seed: int = 0) -> dict:
    """A synthetic 5-stain field tiled ``tiles × tiles`` (≈80 cells per tile), saved as .npy."""
    import numpy as np

    from napari_gradcamo.synthetic.generator import generate_field

    t0 = time.perf_counter()
    field = generate_field(seed, shape=(24, 384, 384), n_cells=80, n_classes=len(CLASSES), treatment=2)
    image, labels = field.image.data.astype(np.float32), field.labels.astype(np.uint32)
    n = int(labels.max())
    rows_img, rows_lab = [], []
    for i in range(tiles):
        img_row, lab_row = [], []
        for j in range(tiles):
            k = i * tiles + j
            # flip alternate tiles so neighbouring tiles do not repeat the same cells at the seams
            sl = (slice(None), slice(None, None, -1 if i % 2 else 1), slice(None, None, -1 if j % 2 else 1))
            img_row.append(image[(slice(None),) + sl])
            lab_row.append(np.where(labels[sl] > 0, labels[sl] + k * n, 0).astype(np.uint32))
        rows_img.append(np.concatenate(img_row, axis=-1))
        rows_lab.append(np.concatenate(lab_row, axis=-1))
    image = np.ascontiguousarray(np.concatenate(rows_img, axis=-2))
    labels = np.ascontiguousarray(np.concatenate(rows_lab, axis=-2))
    np.save(directory / "image.npy", image)
    np.save(directory / "labels.npy", labels)
    return {
        "shape_czyx": list(image.shape),
        "cells": int(len(np.unique(labels)) - 1),
        "channels": field.image.channel_names,
        "seconds": time.perf_counter() - t0,
    }


def make_bundle(arch: str):
    """Seeded untrained classifier for 5 stains, 6 classes, 21×128×128 crops (deterministic on CPU)."""
    import torch

    from napari_gradcamo.models.architectures import build_model
    from napari_gradcamo.models.metadata import ModelBundle, ModelMetadata

    torch.manual_seed(0)
    meta = ModelMetadata(arch, list(CLASSES), list(CHANNELS), list(CROP))
    model = build_model(meta).eval()
    return ModelBundle(model, meta, f"seeded untrained {arch}")


def load(data_dir: Path):
    import numpy as np

    from napari_gradcamo.io.images import make_image

    image = make_image(np.load(data_dir / "image.npy"), "CZYX", list(CHANNELS))
    labels = np.load(data_dir / "labels.npy")
    return image, labels


def batches(cells, size):
    return [cells[i : i + size] for i in range(0, len(cells), size)]


def prepared_crops(model_image, labels, cells, meta):
    """crops + normalised batch, as every method needs them."""
    import numpy as np

    from napari_gradcamo.crops.extract import extract_crop
    from napari_gradcamo.models.checkpoint import normalize_crops

    crops = [extract_crop(model_image, labels, c, tuple(meta.crop_shape)) for c in cells]
    return crops, normalize_crops(np.stack([c.image for c in crops]), meta.normalization)


def timed_cells(labels, wanted, add):
    """The cell table (as the audit builds it, over the whole label image), timed as 'prepare'."""
    from napari_gradcamo.crops.extract import cell_table

    t = time.perf_counter()
    keep = set(wanted)
    cells = [c for c in cell_table(labels) if c.label in keep]
    add("prepare", time.perf_counter() - t)
    return cells


def score_all(maps, crops):
    from napari_gradcamo.audit.scoring import inside_image_mask, score_cam

    return [score_cam(m, c.cell_mask, c.other_mask, inside_image_mask(m.shape, c.padding)) for m, c in zip(maps, crops)]
