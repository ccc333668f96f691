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
from napari_gradcamo.synthetic.shapes import (
    NUCLEUS_XY_GAIN,
    NUCLEUS_Z_GAIN,
    boundaries,
    draw_cells,
    gauss,
    rasterise,
    render_segments,
    smooth_noise,
    um_to_px,
)

STAINS = ("DNA", "ER", "RNA", "AGP", "Mito")
CONFOUNDS = (None, "background", "debris")
#: channels that carry the background confound
CONFOUND_CHANNELS = ("ER", "AGP")
#: channels that carry the debris confound (round specks, no orientation)
DEBRIS_CHANNELS = ("DNA", "RNA")
DEFAULT_SHAPE = (24, 192, 192)
DEFAULT_VOXEL_SIZE = (1.0, 0.5, 0.5)

# Treatment effect sizes at s = 1 (the highest class).
DNA_GAIN = 0.6
MITO_LENGTH_PX = (9.0, 3.0)  # mean tubule length (px along xy) at s = 0 and s = 1
MITO_GAIN = 0.5
ER_SCALE_GAIN = 1.2
ER_GAIN = 0.3

# Base intensities (ADU before the PSF).
_I_DNA = 3000.0
_I_ER = 1300.0
_I_ER_ENVELOPE = 700.0
_I_RNA_NUCLEOLUS = 2600.0
_I_RNA_CYTO = 550.0
_I_RNA_NUCLEOPLASM = 180.0
_I_AGP_MEMBRANE = 1800.0
_I_AGP_CORTEX = 500.0
_I_AGP_FIBRE = 700.0
_I_AGP_DIFFUSE = 150.0
_I_MITO = 1400.0
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
    """
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

    Z, Y, X = shape
    vz, vy, vx = voxel_size
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(8)]
    r_geo, r_tex, r_mito, r_agp, r_cell, r_batch, r_noise, _ = rngs
    s = class_strength(treatment, n_classes) if cell_signal else 0.0

    # ---- geometry --------------------------------------------------------------------------
    z0 = Z * r_geo.uniform(0.12, 0.25)  # coverslip plane (voxel index)
    cells = draw_cells(r_geo, shape, n_cells, voxel_size, z0)
    rough = smooth_noise(r_geo, shape, um_to_px((1.5, 2.0, 2.0), voxel_size))
    labels, nuclei, dnuc, dcell, lut = rasterise(cells, shape, z0, rough, s, vx / vy)
    n = int(labels.max())
    in_cell = labels > 0
    in_nuc = nuclei > 0
    cyto = in_cell & ~in_nuc

    # per-cell intensity variability (cell cycle, staining), one factor per stain
    cell_fac = np.ones((len(STAINS), n + 1), np.float32)
    cell_fac[:, 1:] = r_cell.lognormal(0.0, 0.15, (len(STAINS), n))

    # textures are computed only on the slab that holds cells
    zs = slice(max(int(np.floor(z0)) - 1, 0), min(int(np.ceil(z0 + max((c.height for c in cells), default=1))) + 2, Z))
    slab = (zs, slice(None), slice(None))
    sshape = labels[slab].shape
    L = labels[slab]
    dn = np.where(np.isfinite(dnuc[slab]), dnuc[slab], 0).astype(np.float32)
    dc = np.where(np.isfinite(dcell[slab]), dcell[slab], 1).astype(np.float32)
    N = in_nuc[slab]
    C = cyto[slab]
    perinuc = np.maximum(dn - 1.0, 0.0)

    fine = smooth_noise(r_tex, sshape, um_to_px((0.5, 0.35, 0.35), voxel_size))
    obj = np.zeros((len(STAINS),) + shape, np.float32)
    o = {name: obj[i][slab] for i, name in enumerate(STAINS)}  # views into the slab

    # nucleoli (shared by DNA, dim, and RNA, bright)
    pts = np.zeros(sshape, np.float32)
    fx, fz = 1 + NUCLEUS_XY_GAIN * s, 1 + NUCLEUS_Z_GAIN * s
    for c in cells:
        for oz, oy, ox in c.nucleoli:
            iz = int(round(c.nz + oz * c.nc * fz)) - zs.start
            iy, ix = int(round(c.ny + oy * c.na * fx)), int(round(c.nx + ox * c.nb * fx * vy / vx))
            if 0 <= iz < sshape[0] and 0 <= iy < Y and 0 <= ix < X:
                pts[iz, iy, ix] = 1.0
    nucleoli = gauss(pts, um_to_px((0.6, 0.55, 0.55), voxel_size))
    peak = nucleoli.max()
    if peak > 0:
        nucleoli = np.minimum(nucleoli / (0.6 * peak), 1.0)
    nucleoli *= N

    # DNA: textured chromatin, heterochromatin rim, dim nucleoli; brighter with the treatment
    chrom = 1.0 + 0.35 * fine + 0.35 * np.exp(-(((1.0 - dn) / 0.12) ** 2))
    o["DNA"][:] = N * _I_DNA * (1 + DNA_GAIN * s) * cell_fac[0][L] * np.clip(chrom, 0.1, None) * (1 - 0.55 * nucleoli)

    # ER: reticulum = zero crossings of band-passed noise; coarser and more perinuclear with treatment
    er_sigma = 0.35 * (1 + ER_SCALE_GAIN * s)
    white = r_tex.standard_normal(sshape, dtype=np.float32)
    g1 = gauss(white, um_to_px((er_sigma * 1.6, er_sigma, er_sigma), voxel_size))
    dog = g1 - gauss(g1, um_to_px((er_sigma * 2.4, er_sigma * 1.5, er_sigma * 1.5), voxel_size))
    dog /= float(dog.ravel()[::7].std()) or 1.0
    reticulum = np.exp(-((dog / 0.45) ** 2))
    lam = 1.1 * (1 - 0.45 * s)
    er = C * (0.3 + reticulum) * (0.25 + np.exp(-perinuc / lam)) * _I_ER * (1 + ER_GAIN * s)
    er += (L > 0) * _I_ER_ENVELOPE * np.exp(-(((dn - 1.0) / 0.08) ** 2))
    o["ER"][:] = er * cell_fac[1][L]

    # RNA: nucleoli, dim nucleoplasm, granular perinuclear cytoplasm
    gran = np.clip(fine, 0, None) ** 2
    rna = _I_RNA_NUCLEOLUS * nucleoli + N * _I_RNA_NUCLEOPLASM
    rna += C * _I_RNA_CYTO * (0.5 + 0.5 * gran) * (0.4 + 0.6 * np.exp(-perinuc / 1.5))
    o["RNA"][:] = rna * cell_fac[2][L]

    # AGP: plasma membrane on every border (also between touching cells), cortex, basal stress fibres
    memb = boundaries(L)
    cortex = np.exp(-np.clip(1.0 - dc, 0, None) / 0.08)
    agp = memb * _I_AGP_MEMBRANE + (L > 0) * (_I_AGP_CORTEX * cortex + _I_AGP_DIFFUSE)
    starts, steps, lengths, owner = [], [], [], []
    for i, c in enumerate(cells, start=1):
        k = int(r_agp.integers(3, 8))
        ang = c.angle + r_agp.normal(0, 0.35, k)
        length = r_agp.uniform(0.9, 1.7, k) * c.a
        off = r_agp.uniform(-0.45, 0.45, (k, 2)) * np.array([c.b, c.a])
        zf = z0 - zs.start + r_agp.uniform(0.1, 1.2, k) / vz
        cy = c.cy + off[:, 0] - 0.5 * length * np.sin(ang)
        cx = c.cx + off[:, 1] - 0.5 * length * np.cos(ang)
        starts.append(np.stack([zf, cy, cx], 1))
        steps.append(np.stack([np.zeros(k), np.sin(ang), np.cos(ang)], 1))
        lengths.append(length)
        owner.append(np.full(k, i))
    if starts:
        fib = render_segments(
            sshape, np.concatenate(starts).astype(np.float32), np.concatenate(steps).astype(np.float32),
            np.concatenate(lengths).astype(np.float32), np.full(sum(len(a) for a in owner), _I_AGP_FIBRE, np.float32),
            lut[np.concatenate(owner)].astype(np.int64), L.ravel(),
        )
        agp += fib
    o["AGP"][:] = agp * cell_fac[3][L]

    # Mito: tubules (3D segments) enriched around the nucleus; fragment and brighten with treatment
    cyto_idx = np.flatnonzero(C)
    if cyto_idx.size:
        mean_len = MITO_LENGTH_PX[0] + (MITO_LENGTH_PX[1] - MITO_LENGTH_PX[0]) * s
        n_seg = int(0.08 * cyto_idx.size / mean_len)
        cand = cyto_idx[r_mito.integers(0, cyto_idx.size, 3 * n_seg + 10)]
        w = np.exp(-perinuc.ravel()[cand] / 1.6)
        cand = cand[r_mito.random(cand.size) < w][:n_seg]
        m = cand.size
        p = np.stack(np.unravel_index(cand, sshape), 1).astype(np.float32)
        lens = np.maximum(r_mito.gamma(4.0, mean_len / 4.0, m), 1.0).astype(np.float32)
        # curved tubules: heading drifts along the tubule, slight tilt in z
        t = np.arange(int(np.ceil(lens.max())), dtype=np.float32)
        phi = r_mito.uniform(0, 2 * np.pi, (m, 1)) + r_mito.normal(0, 0.15, (m, 1)) * t[None]
        dz = np.broadcast_to(r_mito.normal(0, 0.12, (m, 1)) * vy / vz, phi.shape)
        step = np.stack([dz, np.sin(phi), np.cos(phi)], -1).astype(np.float32)
        p -= 0.5 * lens[:, None] * step[:, 0]  # tubules start near the sampled voxel, half a length back
        mito = render_segments(
            sshape, p, step, lens, np.full(m, _I_MITO * (1 + MITO_GAIN * s), np.float32),
            L.ravel()[cand].astype(np.int64), np.where(C, L, 0).ravel(),
        )
        o["Mito"][:] = mito * cell_fac[4][L]

    # ---- confound: class-coded stripes in the medium (outside every cell) -------------------
    if confound == "background" and confound_strength:
        cc = confound_class
        theta = np.pi * cc / n_classes
        amp = confound_strength * (0.5 + 0.5 * class_strength(cc, n_classes))
        yy = np.arange(Y, dtype=np.float32)[:, None] * vy
        xx = np.arange(X, dtype=np.float32)[None, :] * vx
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * proj / _CONFOUND_PERIOD_UM)
        outside = ~in_cell
        for name in CONFOUND_CHANNELS:
            ch = STAINS.index(name)
            obj[ch] += outside * (amp * _CONFOUND_AMPLITUDE[name]) * stripes[None]

    if confound == "debris" and confound_strength:
        _add_debris(obj, np.random.default_rng([int(seed), 0xDEB]), in_cell, voxel_size,
                    confound_strength * (0.3 + class_strength(confound_class, n_classes)), z0)

    # ---- optics, background, batch effect, noise --------------------------------------------
    psf = um_to_px((1.0, 0.3, 0.3), voxel_size)
    yy = (np.arange(Y, dtype=np.float32)[:, None] - (Y - 1) / 2) / (Y / 2)
    xx = (np.arange(X, dtype=np.float32)[None, :] - (X - 1) / 2) / (X / 2)
    flat = (1.0 - 0.18 * (yy**2 + xx**2) / 2)[None]
    gains = r_batch.uniform(0.85, 1.15, len(STAINS))
    autofl = r_batch.uniform(0.7, 1.3, len(STAINS))
    data = np.empty_like(obj)
    for i, name in enumerate(STAINS):
        blurred = gauss(obj[i], psf)
        signal = (blurred + _AUTOFLUORESCENCE[name] * autofl[i]) * (gains[i] * flat)
        data[i] = signal
    np.clip(data, 0, None, out=data)
    noise = r_noise.standard_normal(data.shape, dtype=np.float32)
    noise *= np.sqrt(data + _READ_NOISE**2)
    data += noise
    data += _CAMERA_OFFSET
    np.clip(data, 0, 65535, out=data)
    np.rint(data, out=data)

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
    return SyntheticField(image, labels, nuclei, int(treatment), confound_class, bool(cell_signal))


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
