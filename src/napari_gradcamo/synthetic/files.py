"""Synthetic fields written to disk as OME-TIFF images, label TIFFs and a field list (manifest.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.segment.field_list import write_manifest


def write_synthetic_manifest(
    out: str | Path,
    scenario: str = "honest",
    *,
    seed: int = 1,
    n_fields: int = 16,
    first_well: int = 0,
    confound_class=None,
    n_cells: int = 12,
    shape: Sequence[int] | None = None,
    sites_per_well: int = 4,
    planar: bool = False,
) -> Path:
    """Write synthetic fields of an :mod:`.experiment` scenario as OME-TIFFs + label TIFFs + ``manifest.csv``.

    ``confound_class`` (``"mismatch"``, ``"random"`` or a class index) breaks the background shortcut,
    as :func:`napari_gradcamo.synthetic.generator.generate_dataset` documents. ``planar=True`` writes 2D
    fields (CYX images, YX labels): each field's plane with the largest cell area, as a widefield
    2D Cell Painting image would show it.
    """
    import tifffile

    from napari_gradcamo.synthetic.experiment import CLASS_NAMES, FIELD_SHAPE, VOXEL_SIZE, scenario_fields

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kwargs = {"n_cells": n_cells, "shape": tuple(shape) if shape is not None else FIELD_SHAPE,
              "sites_per_well": sites_per_well}
    if confound_class is not None:
        kwargs["confound_class"] = confound_class
    fields = scenario_fields(scenario, seed, n_fields, first_well, **kwargs)
    rows = []
    for f in fields:
        m = f.metadata
        stem = f"{m['plate']}_{m['well']}_s{m['site']}"
        image_path = out / "images" / f"{stem}.ome.tif"
        pixels, labels, axes = f.image.data.transpose(1, 0, 2, 3), f.labels, "ZCYX"
        if planar:
            plane = int(np.argmax((labels > 0).sum(axis=(1, 2))))
            pixels, labels, axes = pixels[plane], labels[plane], "CYX"
        tifffile.imwrite(
            image_path, pixels, ome=True,
            metadata={"axes": axes, "Channel": {"Name": list(f.image.channel_names)},
                      "PhysicalSizeZ": VOXEL_SIZE[0], "PhysicalSizeY": VOXEL_SIZE[1], "PhysicalSizeX": VOXEL_SIZE[2]},
        )
        tifffile.imwrite(out / "images" / f"{stem}_masks.tif", labels.astype(np.uint16), compression="zlib")
        rows.append({"image": f"images/{stem}.ome.tif", "masks": f"images/{stem}_masks.tif",
                     "class": CLASS_NAMES[f.treatment], "plate": m["plate"], "well": m["well"], "site": m["site"]})
    return write_manifest(rows, out / "manifest.csv")
