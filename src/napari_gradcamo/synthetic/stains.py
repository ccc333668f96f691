"""The steps of :func:`~napari_gradcamo.synthetic.generator.generate_field` that place the cells and paint
each stain (intensities in photons before the optics; the class signal ``s`` in [0, 1] as the generator's
docstring describes). Each painter draws only from the random stream it is given."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass
class Geometry:
    """The cells of a field: their shapes, the coverslip plane and the label volumes."""

    cells: list
    z0: float
    labels: np.ndarray
    nuclei: np.ndarray
    dnuc: np.ndarray
    dcell: np.ndarray
    lut: np.ndarray

    @property
    def in_cell(self) -> np.ndarray:
        return self.labels > 0


@dataclass
class Slab:
    """The z-range that holds cells (textures are computed only there) and the per-voxel maps on it."""

    zs: slice
    shape: tuple
    labels: np.ndarray
    dist_nucleus: np.ndarray  # normalised distance from the nucleus centre (1 = its surface)
    dist_cell: np.ndarray  # normalised distance from the cell centre (1 = its surface)
    nucleus: np.ndarray
    cytoplasm: np.ndarray
    perinuclear: np.ndarray  # how far outside the nucleus (0 inside)


def place_cells(rng, shape, n_cells, voxel_size, s) -> Geometry:
    """Cells on a coverslip (its plane drawn first), their rough outlines, rasterised to label volumes."""
    z0 = shape[0] * rng.uniform(0.12, 0.25)  # coverslip plane (voxel index)
    cells = draw_cells(rng, shape, n_cells, voxel_size, z0)
    rough = smooth_noise(rng, shape, um_to_px((1.5, 2.0, 2.0), voxel_size))
    labels, nuclei, dnuc, dcell, lut = rasterise(cells, shape, z0, rough, s, voxel_size[2] / voxel_size[1])
    return Geometry(cells, z0, labels, nuclei, dnuc, dcell, lut)


def cell_slab(geo: Geometry) -> Slab:
    """The slab of z-planes from the coverslip to the top of the tallest cell (one plane of margin)."""
    Z = geo.labels.shape[0]
    top = max((c.height for c in geo.cells), default=1)
    zs = slice(max(int(np.floor(geo.z0)) - 1, 0), min(int(np.ceil(geo.z0 + top)) + 2, Z))
    slab = (zs, slice(None), slice(None))
    labels = geo.labels[slab]
    dn = np.where(np.isfinite(geo.dnuc[slab]), geo.dnuc[slab], 0).astype(np.float32)
    dc = np.where(np.isfinite(geo.dcell[slab]), geo.dcell[slab], 1).astype(np.float32)
    nucleus = geo.nuclei[slab] > 0
    cytoplasm = (labels > 0) & ~nucleus
    return Slab(zs, labels.shape, labels, dn, dc, nucleus, cytoplasm, np.maximum(dn - 1.0, 0.0))


def nucleoli_map(cells, slab: Slab, s, voxel_size) -> np.ndarray:
    """Nucleoli (shared by DNA, dim, and RNA, bright) as a 0..1 map inside the nuclei."""
    vy, vx = voxel_size[1], voxel_size[2]
    Y, X = slab.shape[1], slab.shape[2]
    pts = np.zeros(slab.shape, np.float32)
    fx, fz = 1 + NUCLEUS_XY_GAIN * s, 1 + NUCLEUS_Z_GAIN * s
    for c in cells:
        for oz, oy, ox in c.nucleoli:
            iz = int(round(c.nz + oz * c.nc * fz)) - slab.zs.start
            iy, ix = int(round(c.ny + oy * c.na * fx)), int(round(c.nx + ox * c.nb * fx * vy / vx))
            if 0 <= iz < slab.shape[0] and 0 <= iy < Y and 0 <= ix < X:
                pts[iz, iy, ix] = 1.0
    nucleoli = gauss(pts, um_to_px((0.6, 0.55, 0.55), voxel_size))
    peak = nucleoli.max()
    if peak > 0:
        nucleoli = np.minimum(nucleoli / (0.6 * peak), 1.0)
    nucleoli *= slab.nucleus
    return nucleoli


def paint_dna(slab: Slab, fine, nucleoli, s, factor) -> np.ndarray:
    """Textured chromatin, heterochromatin rim, dim nucleoli; brighter with the treatment."""
    chrom = 1.0 + 0.35 * fine + 0.35 * np.exp(-(((1.0 - slab.dist_nucleus) / 0.12) ** 2))
    return (slab.nucleus * _I_DNA * (1 + DNA_GAIN * s) * factor[slab.labels] * np.clip(chrom, 0.1, None)
            * (1 - 0.55 * nucleoli))


def paint_er(rng, slab: Slab, s, voxel_size, factor) -> np.ndarray:
    """Reticulum = zero crossings of band-passed noise; coarser and more perinuclear with the treatment."""
    er_sigma = 0.35 * (1 + ER_SCALE_GAIN * s)
    white = rng.standard_normal(slab.shape, dtype=np.float32)
    g1 = gauss(white, um_to_px((er_sigma * 1.6, er_sigma, er_sigma), voxel_size))
    dog = g1 - gauss(g1, um_to_px((er_sigma * 2.4, er_sigma * 1.5, er_sigma * 1.5), voxel_size))
    dog /= float(dog.ravel()[::7].std()) or 1.0
    reticulum = np.exp(-((dog / 0.45) ** 2))
    lam = 1.1 * (1 - 0.45 * s)
    er = slab.cytoplasm * (0.3 + reticulum) * (0.25 + np.exp(-slab.perinuclear / lam)) * _I_ER * (1 + ER_GAIN * s)
    er += (slab.labels > 0) * _I_ER_ENVELOPE * np.exp(-(((slab.dist_nucleus - 1.0) / 0.08) ** 2))
    return er * factor[slab.labels]


def paint_rna(slab: Slab, fine, nucleoli, factor) -> np.ndarray:
    """Nucleoli, dim nucleoplasm, granular perinuclear cytoplasm."""
    gran = np.clip(fine, 0, None) ** 2
    rna = _I_RNA_NUCLEOLUS * nucleoli + slab.nucleus * _I_RNA_NUCLEOPLASM
    rna += slab.cytoplasm * _I_RNA_CYTO * (0.5 + 0.5 * gran) * (0.4 + 0.6 * np.exp(-slab.perinuclear / 1.5))
    return rna * factor[slab.labels]


def paint_agp(rng, geo: Geometry, slab: Slab, voxel_size, factor) -> np.ndarray:
    """Plasma membrane on every border (also between touching cells), cortex, basal stress fibres."""
    L = slab.labels
    memb = boundaries(L)
    cortex = np.exp(-np.clip(1.0 - slab.dist_cell, 0, None) / 0.08)
    agp = memb * _I_AGP_MEMBRANE + (L > 0) * (_I_AGP_CORTEX * cortex + _I_AGP_DIFFUSE)
    starts, steps, lengths, owner = [], [], [], []
    for i, c in enumerate(geo.cells, start=1):
        k = int(rng.integers(3, 8))
        ang = c.angle + rng.normal(0, 0.35, k)
        length = rng.uniform(0.9, 1.7, k) * c.a
        off = rng.uniform(-0.45, 0.45, (k, 2)) * np.array([c.b, c.a])
        zf = geo.z0 - slab.zs.start + rng.uniform(0.1, 1.2, k) / voxel_size[0]
        cy = c.cy + off[:, 0] - 0.5 * length * np.sin(ang)
        cx = c.cx + off[:, 1] - 0.5 * length * np.cos(ang)
        starts.append(np.stack([zf, cy, cx], 1))
        steps.append(np.stack([np.zeros(k), np.sin(ang), np.cos(ang)], 1))
        lengths.append(length)
        owner.append(np.full(k, i))
    if starts:
        fib = render_segments(
            slab.shape, np.concatenate(starts).astype(np.float32), np.concatenate(steps).astype(np.float32),
            np.concatenate(lengths).astype(np.float32), np.full(sum(len(a) for a in owner), _I_AGP_FIBRE, np.float32),
            geo.lut[np.concatenate(owner)].astype(np.int64), L.ravel(),
        )
        agp += fib
    return agp * factor[L]


def paint_mito(rng, slab: Slab, s, voxel_size, factor) -> np.ndarray | None:
    """Tubules (3D segments) enriched around the nucleus; fragment and brighten with the treatment.
    None when the field has no cytoplasm."""
    C, L = slab.cytoplasm, slab.labels
    cyto_idx = np.flatnonzero(C)
    if not cyto_idx.size:
        return None
    mean_len = MITO_LENGTH_PX[0] + (MITO_LENGTH_PX[1] - MITO_LENGTH_PX[0]) * s
    n_seg = int(0.08 * cyto_idx.size / mean_len)
    cand = cyto_idx[rng.integers(0, cyto_idx.size, 3 * n_seg + 10)]
    w = np.exp(-slab.perinuclear.ravel()[cand] / 1.6)
    cand = cand[rng.random(cand.size) < w][:n_seg]
    m = cand.size
    p = np.stack(np.unravel_index(cand, slab.shape), 1).astype(np.float32)
    lens = np.maximum(rng.gamma(4.0, mean_len / 4.0, m), 1.0).astype(np.float32)
    # curved tubules: heading drifts along the tubule, slight tilt in z
    t = np.arange(int(np.ceil(lens.max())), dtype=np.float32)
    phi = rng.uniform(0, 2 * np.pi, (m, 1)) + rng.normal(0, 0.15, (m, 1)) * t[None]
    dz = np.broadcast_to(rng.normal(0, 0.12, (m, 1)) * voxel_size[1] / voxel_size[0], phi.shape)
    step = np.stack([dz, np.sin(phi), np.cos(phi)], -1).astype(np.float32)
    p -= 0.5 * lens[:, None] * step[:, 0]  # tubules start near the sampled voxel, half a length back
    mito = render_segments(
        slab.shape, p, step, lens, np.full(m, _I_MITO * (1 + MITO_GAIN * s), np.float32),
        L.ravel()[cand].astype(np.int64), np.where(C, L, 0).ravel(),
    )
    return mito * factor[L]
