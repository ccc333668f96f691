"""Memory boundedness: a field much larger than batch × crop is audited lazily under a bounded peak RSS.

The field (5 × 16 × 1024 × 1024 uint16 = 168 MB on disk, 336 MB as the float32 copy the eager reader makes)
is written as OME-Zarr in 1 × 8 × 128 × 128 chunks. A fresh Python process loads the model, warms the audit up
on a small field, notes its peak RSS, audits the big field through the plate worker's task and reports how much
the peak grew. The bound: the labels (32 MB) plus 64 MB of slack — under a third of the float32 field.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_gradcamo.io.ome_zarr import open_group, write_image
from napari_gradcamo.models.bundled import bundled_model_path

SHAPE = (16, 1024, 1024)
GRID = (2, 8, 8)  # 128 cubic-ish cells

SCRIPT = r"""
import json, resource, sys
from pathlib import Path
import numpy as np
from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.plate.run import audit_field
from napari_gradcamo.plate.sources import FieldTask
from napari_gradcamo.plate.store import file_digest

root, model = Path(sys.argv[1]), sys.argv[2]
digest = file_digest(model)
settings = AuditSettings(batch_size=8)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
audit_field(FieldTask("P", "A01", 1, str(root / "small")), "", model, digest, settings, "w", "r", str(root / "out"), 1)
before = peak()
result = audit_field(FieldTask("P", "A01", 2, str(root / "big")), "", model, digest, settings, "b", "r",
                     str(root / "out"), 1)
print(json.dumps({"before_mb": before, "after_mb": peak(), "cells": result["cells"]}))
"""


def _labels(shape, grid) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    steps = [s // g for s, g in zip(shape, grid)]
    label = 0
    for i in range(grid[0]):
        for j in range(grid[1]):
            for k in range(grid[2]):
                label += 1
                z, y, x = i * steps[0] + 1, j * steps[1] + 20, k * steps[2] + 20
                labels[z : z + 6, y : y + 24, x : x + 24] = label
    return labels


def _write_field(root: Path, name: str, shape, grid) -> int:
    labels = _labels(shape, grid)
    image = np.random.default_rng(0).integers(0, 400, (5, *shape), dtype=np.uint16)
    image += (labels > 0).astype(np.uint16)[None] * 600
    write_image(open_group(root, mode="w"), name, image, ["DNA", "ER", "RNA", "AGP", "Mito"], (2.0, 1.5, 1.5),
                labels, chunks=(1, 8, 128, 128))
    return int(labels.max())


def test_a_large_field_is_audited_under_a_bounded_peak_rss(tmp_path):
    small_cells = _write_field(tmp_path / "small", "", (12, 64, 64), (1, 2, 2))
    big_cells = _write_field(tmp_path / "big", "", SHAPE, GRID)
    field_float32_mb = 5 * np.prod(SHAPE) * 4 / 2**20
    labels_mb = np.prod(SHAPE) * 2 / 2**20
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(bundled_model_path("honest"))],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    growth = measured["after_mb"] - measured["before_mb"]
    print(f"peak RSS {measured['before_mb']:.0f} → {measured['after_mb']:.0f} MB (+{growth:.0f} MB) for a "
          f"{field_float32_mb:.0f} MB (float32) field with {big_cells} cells; labels {labels_mb:.0f} MB")
    assert small_cells == 4 and measured["cells"] == big_cells
    bound = labels_mb + 64
    assert bound < field_float32_mb / 3 and growth < bound
