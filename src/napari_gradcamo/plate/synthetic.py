"""A synthetic HCS plate written as OME-Zarr (images + label images) with its layout CSV, for tests,
benchmarks and trying the plate command offline."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def write_synthetic_plate(out: str | Path, n_fields: int = 48, *, sites_per_well: int = 4, scenario: str = "honest",
                          seed: int = 1, n_cells: int = 12, shape: Sequence[int] | None = None,
                          chunks: Sequence[int] | None = None, name: str = "SYN01") -> tuple[Path, Path]:
    """Write ``n_fields`` synthetic fields (``sites_per_well`` per well, classes alternating by well) as
    ``out/<name>.ome.zarr`` and ``out/layout.csv`` (well → treatment, dose); returns both paths."""
    from napari_gradcamo.io.ome_zarr import write_plate
    from napari_gradcamo.synthetic.experiment import CLASS_NAMES, FIELD_SHAPE, scenario_fields

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = scenario_fields(scenario, seed, n_fields, shape=tuple(shape) if shape else FIELD_SHAPE,
                             n_cells=n_cells, sites_per_well=sites_per_well)
    records, layout = [], {}
    for f in fields:
        well = f.metadata["well"]
        records.append({"row": well[0], "column": well[1:], "image": np.round(f.image.data).astype(np.uint16),
                        "channel_names": f.image.channel_names, "voxel_size": f.image.voxel_size,
                        "labels": f.labels.astype(np.uint16)})
        layout[well] = {"well": well, "treatment": CLASS_NAMES[f.treatment], "dose": float(f.treatment)}
    plate = write_plate(out / f"{name}.ome.zarr", name, records, chunks)
    layout_path = out / "layout.csv"
    pd.DataFrame(list(layout.values())).to_csv(layout_path, index=False)
    return plate, layout_path
