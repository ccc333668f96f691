"""The offline demo: a synthetic 3D Cell Painting field audited with the two bundled models."""

from __future__ import annotations

import json
import time
from pathlib import Path

from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.models.bundled import FIELD_MODELS, load_demo_model
from napari_gradcamo.output import results


def run_headless_demo(out: Path) -> dict:
    """Audit the demo field with both bundled models; write image, masks, tables and a summary."""
    import tifffile

    from napari_gradcamo.synthetic.experiment import demo_field

    out.mkdir(parents=True, exist_ok=True)
    field = demo_field()
    image = field.image
    tifffile.imwrite(
        out / "demo_field.ome.tif", image.data.transpose(1, 0, 2, 3), ome=True, compression="zlib",
        metadata={"axes": "ZCYX", "Channel": {"Name": image.channel_names}, "PhysicalSizeZ": image.voxel_size[0],
                  "PhysicalSizeY": image.voxel_size[1], "PhysicalSizeX": image.voxel_size[2]},
    )
    tifffile.imwrite(out / "demo_masks.tif", field.labels, compression="zlib")
    summary = {"field": str(out / "demo_field.ome.tif"), "cells": field.n_cells, "models": {}}
    for name in FIELD_MODELS:
        bundle = load_demo_model(name)
        start = time.perf_counter()
        result = run_audit(image, field.labels, bundle, AuditSettings())
        seconds = time.perf_counter() - start
        csv, _ = results.write_table(result.table, out, f"demo_{name}_gradcamo")
        summary["models"][name] = {"table": str(csv), "seconds": round(seconds, 2),
                                   "seconds_per_cell": round(seconds / max(1, field.n_cells), 4),
                                   **results.summary(result.table)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
