"""Synthetic 3D Cell Painting fields with known ground truth (numpy / scipy only).

Each field is a ``CZYX`` z-stack of adherent cells lying on a coverslip, painted with the five
Cell Painting stains :data:`STAINS`, together with its exact whole-cell and nucleus label images.
It is meant for tests, for training small models on a CPU, and for the demo.

Geometry (sizes are in µm and converted with ``voxel_size``):

* cells are irregular half-ellipsoid domes (flat bottom on a common, field-specific coverslip plane,
  xy outline an ellipse modulated by low-order harmonics plus a smooth 3D roughness field);
  territories are assigned by a multiplicatively weighted distance, so close neighbours touch and
  share a border; cell centres are anywhere in the field, so some cells are cut by the xy border;
* every cell holds one irregular ellipsoidal nucleus that is never cut by a neighbour;
* labels: ``labels`` = whole cell (nucleus + cytoplasm), ``nuclei`` = nucleus with the same id.

Stains: DNA (textured chromatin, dim nucleoli, bright heterochromatin rim), ER (reticular network
from the zero crossings of band-passed noise, perinuclear, bright nuclear envelope), RNA (bright
nucleoli, granular cytoplasm), AGP (plasma membrane at every cell border, cortical actin, basal
stress fibres) and Mito (tubules as short 3D segments, enriched around the nucleus). Then an
anisotropic Gaussian PSF, flat-field vignetting, per-channel autofluorescence and camera offset,
per-field per-channel gain (a batch effect that does NOT follow the class), shot + read noise and
rounding to uint16 levels (returned as float32).

Class signal (inside cells only; ``s = treatment / (n_classes - 1)`` in [0, 1]):

* nucleus grows (xy radii x (1 + 0.30 s), z radius x (1 + 0.10 s)) and DNA gets brighter
  (x (1 + 0.6 s));
* mitochondria fragment: mean tubule length 9 px -> 3 px, brighter (x (1 + 0.5 s));
* ER swells: coarser reticulum (texture scale x (1 + 1.2 s)), more perinuclear, brighter (x (1 + 0.3 s)).

``cell_signal=False`` draws every cell with the class-0 morphology (same seed -> identical cells for
every class), so the cells carry no class information at all.

Confound (``confound="background"``; outside the cells only, ``labels == 0``): a stripe pattern in
the ER and AGP channels of the medium, whose orientation (``c * 180° / n_classes``) and amplitude
(``x (0.5 + 0.5 c / (n_classes - 1))``, so the background mean grows with ``c``) encode the class
``c = confound_class`` (default: the treatment).  Pass another ``confound_class`` (or
``"mismatch"`` / ``"random"`` to :func:`generate_dataset`) to break the shortcut in a test set.

Confound ``"debris"`` (also outside the cells only): round, isotropic specks of DNA/RNA-stained debris
floating in the medium above the coverslip (no texture, no orientation); their number per area grows with the class
(:data:`_DEBRIS_PER_100UM2` × (0.3 + c / (n_classes - 1))), so only their density carries the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_gradcamo.io.images import Image
from napari_gradcamo.synthetic.shapes import gauss, smooth_noise, um_to_px
from napari_gradcamo.synthetic.stains import (
    cell_slab,
    nucleoli_map,
    paint_agp,
    paint_dna,
    paint_er,
    paint_mito,
    paint_rna,
    place_cells,
)

STAINS = ("DNA", "ER", "RNA", "AGP", "Mito")
CONFOUNDS = (None, "background", "debris")
#: channels that carry the background confound
CONFOUND_CHANNELS = ("ER", "AGP")
#: channels that carry the debris confound (round specks, no orientation)
DEBRIS_CHANNELS = ("DNA", "RNA")
DEFAULT_SHAPE = (24, 192, 192)
DEFAULT_VOXEL_SIZE = (1.0, 0.5, 0.5)

# Imaging and confounds (ADU); the stains' intensities and treatment effects are in .stains.
_CAMERA_OFFSET = 100.0
_AUTOFLUORESCENCE = {"DNA": 40.0, "ER": 90.0, "RNA": 60.0, "AGP": 80.0, "Mito": 50.0}
_CONFOUND_AMPLITUDE = {"ER": 260.0, "AGP": 260.0}
_CONFOUND_PERIOD_UM = 4.0
_DEBRIS_PER_100UM2 = 2.5
_DEBRIS_RADIUS_UM = 1.2
_DEBRIS_INTENSITY = {"DNA": 2500.0, "RNA": 1500.0}
_READ_NOISE = 3.0


@dataclass
class SyntheticField:
    """One synthetic field of view with its ground truth.

    ``labels`` are whole cells (nucleus + cytoplasm), ``nuclei`` carry the same ids restricted to the
    nucleus; both ``ZYX`` ``uint32`` with ids 1..n_cells.
    """

    image: Image
    labels: np.ndarray
    nuclei: np.ndarray
    treatment: int
    confound_class: int | None = None
    cell_signal: bool = True

    @property
    def n_cells(self) -> int:
        return int(self.labels.max())

    @property
    def metadata(self) -> dict:
        return self.image.metadata


def class_strength(k: int, n_classes: int) -> float:
    """Graded effect size of class ``k``: 0 for the control, 1 for the highest class."""
    return float(k) / (n_classes - 1) if n_classes > 1 else 0.0


def _add_debris(obj, rng, in_cell, voxel_size, density, z0) -> None:
    """Round specks floating in the medium above the coverslip, outside every cell, ``density`` × the base
    number per area."""
    Z, Y, X = in_cell.shape
    area = Y * X * voxel_size[1] * voxel_size[2]
    n = rng.poisson(_DEBRIS_PER_100UM2 * density * area / 100.0)
    points = np.zeros(in_cell.shape, np.float32)
    zlo = min(max(int(round(z0)), 0), Z - 1)
    points[rng.integers(zlo, Z, n), rng.integers(0, Y, n), rng.integers(0, X, n)] = 1.0
    sigma = um_to_px((_DEBRIS_RADIUS_UM,) * 3, voxel_size)
    one = np.zeros((9, 9, 9), np.float32)
    one[4, 4, 4] = 1.0
    specks = gauss(points, sigma) * ~in_cell / max(float(gauss(one, sigma).max()), 1e-12)
    for name in DEBRIS_CHANNELS:
        obj[STAINS.index(name)] += _DEBRIS_INTENSITY[name] * specks


# --------------------------------------------------------------------------------------------
# public API


def _checked_arguments(shape, voxel_size, n_cells, treatment, n_classes, confound, confound_class):
    """The arguments of :func:`generate_field` validated and normalised: (shape, voxel_size, confound_class)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be (z, y, x) with every size >= 4, got {shape}.")
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise ValueError(f"voxel_size must be three positive numbers (z, y, x) in µm, got {voxel_size}.")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}.")
    if not 0 <= treatment < n_classes:
        raise ValueError(f"treatment must be in 0..{n_classes - 1}, got {treatment}.")
    if confound not in CONFOUNDS:
        raise ValueError(f"confound must be one of {CONFOUNDS}, got {confound!r}.")
    if confound is None:
        confound_class = None
    else:
        confound_class = treatment if confound_class is None else int(confound_class)
        if not 0 <= confound_class < n_classes:
            raise ValueError(f"confound_class must be in 0..{n_classes - 1}, got {confound_class}.")
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}.")
    return shape, voxel_size, confound_class


def _add_stripes(obj, in_cell, confound_class, n_classes, strength, voxel_size) -> None:
    """Class-coded stripes in the medium (outside every cell) of the ER and AGP channels."""
    Y, X = in_cell.shape[1:]
    theta = np.pi * confound_class / n_classes
    amp = strength * (0.5 + 0.5 * class_strength(confound_class, n_classes))
    yy = np.arange(Y, dtype=np.float32)[:, None] * voxel_size[1]
    xx = np.arange(X, dtype=np.float32)[None, :] * voxel_size[2]
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * proj / _CONFOUND_PERIOD_UM)
    outside = ~in_cell
    for name in CONFOUND_CHANNELS:
        obj[STAINS.index(name)] += outside * (amp * _CONFOUND_AMPLITUDE[name]) * stripes[None]


def _imaged(obj, r_batch, r_noise, voxel_size) -> np.ndarray:
    """What the camera records: blur, autofluorescence, uneven illumination, per-stain gain (the batch
    effect), shot and read noise, camera offset, 16-bit range."""
    Y, X = obj.shape[2:]
    psf = um_to_px((1.0, 0.3, 0.3), voxel_size)
    yy = (np.arange(Y, dtype=np.float32)[:, None] - (Y - 1) / 2) / (Y / 2)
    xx = (np.arange(X, dtype=np.float32)[None, :] - (X - 1) / 2) / (X / 2)
    flat = (1.0 - 0.18 * (yy**2 + xx**2) / 2)[None]
    gains = r_batch.uniform(0.85, 1.15, len(STAINS))
    autofl = r_batch.uniform(0.7, 1.3, len(STAINS))
    data = np.empty_like(obj)
    for i, name in enumerate(STAINS):
        blurred = gauss(obj[i], psf)
        data[i] = (blurred + _AUTOFLUORESCENCE[name] * autofl[i]) * (gains[i] * flat)
    np.clip(data, 0, None, out=data)
    noise = r_noise.standard_normal(data.shape, dtype=np.float32)
    noise *= np.sqrt(data + _READ_NOISE**2)
    data += noise
    data += _CAMERA_OFFSET
    np.clip(data, 0, 65535, out=data)
    np.rint(data, out=data)
    return data


def generate_field(
    seed: int = 0,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    n_cells: int = 12,
    treatment: int = 0,
    n_classes: int = 2,
    confound: str | None = None,
    cell_signal: bool = True,
    confound_class: int | None = None,
    confound_strength: float = 1.0,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE,
    plate: str = "SYN01",
    well: str = "B02",
    site: int = 1,
) -> SyntheticField:
    """Generate one synthetic 3D Cell Painting field (deterministic for ``seed``).

    ``treatment`` (0..n_classes-1) sets the cell morphology (unless ``cell_signal`` is False, then
    every cell looks like class 0).  ``confound="background"`` adds a class-coded stripe pattern to
    the ER and AGP channels outside the cells; its class is ``confound_class`` (default
    ``treatment``), scaled by ``confound_strength``.

    The steps: place the cells (:func:`.stains.place_cells`), paint each stain on the slab of planes that holds
    them (:mod:`.stains`), add the confound
    (:func:`_add_stripes`, :func:`_add_debris`), image it (:func:`_imaged`). Each step draws from its own
    random stream, so one step's draws never shift another's.

    Examples
    --------
    >>> field = generate_field(0, shape=(8, 48, 48), n_cells=3)
    >>> field.image.data.shape, field.n_cells
    ((5, 8, 48, 48), 3)
    """
    shape, voxel_size, confound_class = _checked_arguments(shape, voxel_size, n_cells, treatment, n_classes,
                                                           confound, confound_class)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(8)]
    r_geo, r_tex, r_mito, r_agp, r_cell, r_batch, r_noise, _ = rngs
    s = class_strength(treatment, n_classes) if cell_signal else 0.0

    geo = place_cells(r_geo, shape, n_cells, voxel_size, s)
    n = int(geo.labels.max())
    # per-cell intensity variability (cell cycle, staining), one factor per stain
    cell_fac = np.ones((len(STAINS), n + 1), np.float32)
    cell_fac[:, 1:] = r_cell.lognormal(0.0, 0.15, (len(STAINS), n))

    slab = cell_slab(geo)
    fine = smooth_noise(r_tex, slab.shape, um_to_px((0.5, 0.35, 0.35), voxel_size))
    nucleoli = nucleoli_map(geo.cells, slab, s, voxel_size)
    obj = np.zeros((len(STAINS),) + shape, np.float32)
    on_slab = {name: obj[i][slab.zs] for i, name in enumerate(STAINS)}  # views into the slab
    on_slab["DNA"][:] = paint_dna(slab, fine, nucleoli, s, cell_fac[0])
    on_slab["ER"][:] = paint_er(r_tex, slab, s, voxel_size, cell_fac[1])
    on_slab["RNA"][:] = paint_rna(slab, fine, nucleoli, cell_fac[2])
    on_slab["AGP"][:] = paint_agp(r_agp, geo, slab, voxel_size, cell_fac[3])
    mito = paint_mito(r_mito, slab, s, voxel_size, cell_fac[4])
    if mito is not None:
        on_slab["Mito"][:] = mito

    if confound == "background" and confound_strength:
        _add_stripes(obj, geo.in_cell, confound_class, n_classes, confound_strength, voxel_size)
    if confound == "debris" and confound_strength:
        _add_debris(obj, np.random.default_rng([int(seed), 0xDEB]), geo.in_cell, voxel_size,
                    confound_strength * (0.3 + class_strength(confound_class, n_classes)), geo.z0)

    data = _imaged(obj, r_batch, r_noise, voxel_size)
    metadata = {
        "plate": plate,
        "well": well,
        "site": int(site),
        "treatment": int(treatment),
        "n_classes": int(n_classes),
        "confound": confound,
        "confound_class": confound_class,
        "cell_signal": bool(cell_signal),
        "n_cells": n,
        "seed": int(seed),
        "synthetic": True,
    }
    image = Image(data, list(STAINS), voxel_size, source=f"synthetic:seed={int(seed)}", metadata=metadata)
    return SyntheticField(image, geo.labels, geo.nuclei, int(treatment), confound_class, bool(cell_signal))


_ROWS = "ABCDEFGHIJKLMNOP"


def well_name(index: int) -> str:
    """Inner wells of a 384-well plate in row-major order: B02, B03, ..., B23, C02, ..."""
    row = _ROWS[1 + (index // 22) % 14]
    return f"{row}{2 + index % 22:02d}"


def generate_dataset(
    seed: int = 0,
    n_fields: int = 8,
    *,
    n_classes: int = 2,
    confound: str | None = None,
    cell_signal: bool = True,
    confound_class: int | str | None = None,
    confound_strength: float = 1.0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    n_cells: int = 12,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE,
    sites_per_well: int = 4,
    plate: str = "SYN01",
    first_well: int = 0,
) -> list[SyntheticField]:
    """Generate ``n_fields`` fields: ``sites_per_well`` sites per well, wells alternate treatments.

    Field ``i`` is site ``i % sites_per_well + 1`` of well ``well_name(first_well + i //
    sites_per_well)``, whose treatment is ``(first_well + i // sites_per_well) % n_classes``.
    ``confound_class``: None (the background follows the treatment), an int (every field shows that
    class), ``"mismatch"`` (class ``(treatment + 1) % n_classes``) or ``"random"`` (drawn per well,
    independent of the treatment).  Use a different ``seed`` or ``first_well`` for a held-out set.
    """
    if n_fields < 0 or sites_per_well < 1:
        raise ValueError("n_fields must be >= 0 and sites_per_well >= 1.")
    if isinstance(confound_class, str) and confound_class not in ("mismatch", "random"):
        raise ValueError(f"confound_class must be None, an int, 'mismatch' or 'random', got {confound_class!r}.")
    seq = np.random.SeedSequence([int(seed), 0x5EED])
    field_seeds = [int(s.generate_state(1)[0]) for s in seq.spawn(n_fields)]
    r_conf = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0F]))
    well_conf: dict[int, int] = {}
    fields = []
    for i in range(n_fields):
        w = first_well + i // sites_per_well
        treatment = w % n_classes
        if confound_class is None:
            cc = None
        elif confound_class == "mismatch":
            cc = (treatment + 1) % n_classes
        elif confound_class == "random":
            if w not in well_conf:
                well_conf[w] = int(r_conf.integers(0, n_classes))
            cc = well_conf[w]
        else:
            cc = int(confound_class)
        fields.append(
            generate_field(
                field_seeds[i], shape=shape, n_cells=n_cells, treatment=treatment, n_classes=n_classes,
                confound=confound, cell_signal=cell_signal, confound_class=cc,
                confound_strength=confound_strength, voxel_size=voxel_size, plate=plate,
                well=well_name(w), site=i % sites_per_well + 1,
            )
        )
    return fields
