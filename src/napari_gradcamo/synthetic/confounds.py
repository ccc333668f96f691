"""Two more planted cues, added to a finished synthetic field (:func:`~.generator.generate_field`).

They exist to judge the audit's verdict on cues the stripes and debris confounds do not cover:

* ``puncta`` — bright round puncta in the RNA channel, :data:`PUNCTA_PER_CELL` per cell on average, in
  fields of the *treated* class only; the control class is marked by their **absence**. ``where="cells"``
  puts them inside the cells (an honest cue), ``where="background"`` in the medium (a shortcut).
* ``glow`` — the medium (every voxel outside the cells) glows in the ER channel, brighter with the class
  (a fluorescent medium component excluded by the cells' volume): a smooth intensity-level cue with no
  texture, outside the cells only.

Both are drawn on the image after its optics and noise, blurred with the same PSF width, and are
deterministic for ``seed``.
"""

from __future__ import annotations

import numpy as np

from napari_gradcamo.synthetic.generator import STAINS, SyntheticField, class_strength, generate_dataset
from napari_gradcamo.synthetic.shapes import gauss, um_to_px

NEW_CONFOUNDS = ("puncta", "glow")
PUNCTA_CHANNEL = "RNA"
PUNCTA_PER_CELL = 6.0
PUNCTA_INTENSITY = 1800.0
PUNCTA_RADIUS_UM = 0.6
GLOW_CHANNEL = "ER"
GLOW_LEVEL = 260.0


def add_puncta(field: SyntheticField, where: str, seed: int, n_classes: int = 2) -> SyntheticField:
    """Add class-coded puncta to ``field`` in place (none for the control class) and return it.

    ``where``: ``"cells"`` (inside the cell masks) or ``"background"`` (outside every cell).
    """
    if where not in ("cells", "background"):
        raise ValueError(f"where must be 'cells' or 'background', got {where!r}.")
    strength = class_strength(field.treatment, n_classes)
    if strength <= 0:
        return field
    rng = np.random.default_rng([int(seed), 0x9C7A])
    region = field.labels > 0 if where == "cells" else field.labels == 0
    candidates = np.flatnonzero(region)
    n = rng.poisson(PUNCTA_PER_CELL * strength * max(field.n_cells, 1))
    if candidates.size == 0 or n == 0:
        return field
    points = np.zeros(field.labels.shape, np.float32)
    points.ravel()[rng.choice(candidates, size=min(n, candidates.size), replace=False)] = 1.0
    voxel = field.image.voxel_size
    sigma = um_to_px((max(PUNCTA_RADIUS_UM, voxel[0] / 2), PUNCTA_RADIUS_UM, PUNCTA_RADIUS_UM), voxel)
    one = np.zeros((9, 9, 9), np.float32)
    one[4, 4, 4] = 1.0
    spots = gauss(points, sigma) / max(float(gauss(one, sigma).max()), 1e-12)
    field.image.data[STAINS.index(PUNCTA_CHANNEL)] += PUNCTA_INTENSITY * spots
    field.image.metadata["confound"] = f"puncta-{where}"
    return field


def add_glow(field: SyntheticField, seed: int, n_classes: int = 2) -> SyntheticField:
    """Make the medium of ``field`` glow in the ER channel in place, brighter with its class; return it."""
    level = GLOW_LEVEL * (0.25 + class_strength(field.treatment, n_classes))
    rng = np.random.default_rng([int(seed), 0x610])
    medium = gauss((field.labels == 0).astype(np.float32), um_to_px((1.0, 0.3, 0.3), field.image.voxel_size))
    glow = level * medium
    glow += rng.standard_normal(glow.shape).astype(np.float32) * np.sqrt(np.maximum(glow, 0.0))  # its shot noise
    field.image.data[STAINS.index(GLOW_CHANNEL)] += np.clip(glow, 0.0, None)
    field.image.metadata["confound"] = "glow"
    return field


def confound_fields(kind: str, seed: int, n_fields: int, *, honest: bool, first_well: int = 0, **kwargs):
    """Fields of one planted-cue scenario, alternating classes by well (as :func:`generate_dataset`).

    ``kind``: ``"stripes"`` or ``"debris"`` (the generator's own confounds), ``"puncta"`` or ``"glow"``.
    ``honest``: the cells carry the class and the cue is absent (for ``puncta``: the puncta lie in the
    cells); otherwise every cell looks like a control and only the cue carries the class.
    """
    if kind not in ("stripes", "debris", *NEW_CONFOUNDS):
        raise ValueError(f"Unknown confound kind {kind!r}; use stripes, debris, puncta or glow.")
    if honest:
        if kind == "puncta":
            fields = generate_dataset(seed, n_fields, first_well=first_well, cell_signal=False, **kwargs)
            return [add_puncta(f, "cells", seed * 1000 + i) for i, f in enumerate(fields)]
        return generate_dataset(seed, n_fields, first_well=first_well, cell_signal=True, **kwargs)
    if kind in ("stripes", "debris"):
        confound = "background" if kind == "stripes" else "debris"
        return generate_dataset(seed, n_fields, first_well=first_well, cell_signal=False, confound=confound, **kwargs)
    fields = generate_dataset(seed, n_fields, first_well=first_well, cell_signal=False, **kwargs)
    if kind == "puncta":
        return [add_puncta(f, "background", seed * 1000 + i) for i, f in enumerate(fields)]
    return [add_glow(f, seed * 1000 + i) for i, f in enumerate(fields)]
