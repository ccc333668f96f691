"""Cell geometry of the synthetic fields: irregular touching cells drawn, rasterised and smoothed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: How much the strongest treatment (s = 1) enlarges nuclei, in xy and in z.
NUCLEUS_XY_GAIN = 0.30
NUCLEUS_Z_GAIN = 0.10


def gauss(a: np.ndarray, sigma) -> np.ndarray:
    return ndi.gaussian_filter(a, sigma, mode="nearest", truncate=3.0)


def smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Smooth Gaussian noise with unit standard deviation (float32)."""
    n = gauss(rng.standard_normal(shape, dtype=np.float32), sigma)
    sd = float(n.ravel()[::7].std()) or 1.0
    n /= sd
    return n


def um_to_px(values_um, voxel_size) -> tuple[float, float, float]:
    return tuple(float(v) / float(s) for v, s in zip(values_um, voxel_size))


def render_segments(shape, starts, steps, lengths, weights, owner, allowed) -> np.ndarray:
    """Sum segments into a volume: segment i has points ``starts[i] + t * steps[i]``, t < lengths[i].

    A point is kept only where ``allowed`` (flat array of label ids, 0 = refused) equals ``owner[i]``.
    """
    size = int(np.prod(shape))
    if len(starts) == 0:
        return np.zeros(shape, np.float32)
    lmax = int(np.ceil(lengths.max()))
    t = np.arange(lmax, dtype=np.float32)
    if steps.ndim == 2:  # straight segments
        pts = starts[:, None, :] + t[None, :, None] * steps[:, None, :]
    else:  # per-point steps (curved segments): cumulative sum, first point at the start
        steps = steps[:, :lmax]
        pts = starts[:, None, :] + np.cumsum(steps, axis=1) - steps[:, :1]
    idx = np.rint(pts).astype(np.int64)
    keep = t[None, :] < lengths[:, None]
    for ax in range(3):
        keep &= (idx[..., ax] >= 0) & (idx[..., ax] < shape[ax])
    idx = idx[keep]
    flat = np.ravel_multi_index((idx[:, 0], idx[:, 1], idx[:, 2]), shape)
    own = np.broadcast_to(owner[:, None], keep.shape)[keep]
    w = np.broadcast_to(weights[:, None], keep.shape)[keep]
    ok = (allowed[flat] == own) & (own > 0)
    out = np.bincount(flat[ok], weights=w[ok], minlength=size)
    return out.astype(np.float32).reshape(shape)


def boundaries(labels: np.ndarray, z_weight: float = 0.6) -> np.ndarray:
    """Membrane map: 1 on cell voxels that touch another label or background in y/x, ``z_weight`` in z."""
    b = np.zeros(labels.shape, np.float32)
    for axis, w in ((0, z_weight), (1, 1.0), (2, 1.0)):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        b[tuple(lo)] = np.maximum(b[tuple(lo)], w * diff)
        b[tuple(hi)] = np.maximum(b[tuple(hi)], w * diff)
    b[labels == 0] = 0
    return b


@dataclass
class _Cell:
    cy: float
    cx: float
    angle: float
    a: float  # xy semi-axes (px) of the cell
    b: float
    height: float  # px (z) above the coverslip
    harm: np.ndarray  # (k, amp, phase) rows
    ny: float
    nx: float
    nz: float
    n_angle: float
    na: float  # nucleus semi-axes (px) at s = 0
    nb: float
    nc: float
    n_harm: np.ndarray
    nucleoli: np.ndarray  # (m, 3) offsets in units of the nucleus semi-axes


def draw_cells(rng, shape, n_cells, vox, z0) -> list[_Cell]:
    """Random cells (class-independent); centres respect a minimal nucleus-to-nucleus distance."""
    _, Y, X = shape
    vz, vy, vx = vox
    cells: list[_Cell] = []
    max_nuc_xy = 5.4 * (1 + NUCLEUS_XY_GAIN) * 1.08  # µm, largest possible nucleus radius
    min_dist = 2 * max_nuc_xy + 1.5  # µm between nucleus centres
    tries = 0
    while len(cells) < n_cells and tries < 400 * n_cells:
        tries += 1
        cy, cx = rng.uniform(0, Y), rng.uniform(0, X)
        # nucleus centre offset from the cell centre
        off_r, off_t = rng.uniform(0, 1.5), rng.uniform(0, 2 * np.pi)
        ny, nx = cy + off_r * np.sin(off_t) / vy, cx + off_r * np.cos(off_t) / vx
        if any(np.hypot((ny - c.ny) * vy, (nx - c.nx) * vx) < min_dist for c in cells):
            continue
        r_um = rng.uniform(11.0, 15.0)
        aspect = rng.uniform(0.7, 1.0)
        ks = np.arange(2, 6)
        harm = np.stack([ks, rng.uniform(0, 0.11, ks.size) / (ks - 1) ** 0.5, rng.uniform(0, 2 * np.pi, ks.size)], 1)
        nr_um = rng.uniform(4.3, 5.4)
        n_aspect = rng.uniform(0.75, 0.95)
        nzr_um = rng.uniform(2.4, 3.1)
        nks = np.arange(2, 4)
        n_harm = np.stack([nks, rng.uniform(0, 0.05, nks.size), rng.uniform(0, 2 * np.pi, nks.size)], 1)
        m = rng.integers(1, 5)
        nucleoli = rng.uniform(-0.45, 0.45, (m, 3)) * np.array([0.5, 1.0, 1.0])
        height_um = rng.uniform(9.0, 12.0)
        cells.append(
            _Cell(
                cy=cy, cx=cx, angle=rng.uniform(0, np.pi), a=r_um / vy, b=r_um * aspect / vy,
                height=height_um / vz, harm=harm, ny=ny, nx=nx,
                nz=z0 + (nzr_um * (1 + NUCLEUS_Z_GAIN) + 0.6) / vz,
                n_angle=rng.uniform(0, np.pi), na=nr_um / vy, nb=nr_um * n_aspect / vy, nc=nzr_um / vz,
                n_harm=n_harm, nucleoli=nucleoli,
            )
        )
    return cells


def _harmonic(theta, harm) -> np.ndarray:
    mod = np.ones_like(theta)
    for k, amp, ph in harm:
        mod += amp * np.cos(k * theta + ph)
    return mod


def rasterise(cells, shape, z0, rough, s_nuc, x_over_y=1.0):
    """Whole-cell labels, nuclei, each voxel's normalised distance to its nucleus and to its cell rim."""
    Z, Y, X = shape
    best = np.full(shape, np.inf, np.float32)
    lab = np.zeros(shape, np.uint32)
    dnuc = np.full(shape, np.inf, np.float32)
    dcell = np.full(shape, np.inf, np.float32)
    fx = 1 + NUCLEUS_XY_GAIN * s_nuc
    fz = 1 + NUCLEUS_Z_GAIN * s_nuc
    for i, c in enumerate(cells, start=1):
        reach = max(c.a, c.b) * 1.25 + 2  # in y pixels; x distances are scaled by x_over_y
        y0, y1 = max(int(c.cy - reach), 0), min(int(c.cy + reach) + 2, Y)
        x0, x1 = max(int(c.cx - reach / x_over_y), 0), min(int(c.cx + reach / x_over_y) + 2, X)
        zlo, zhi = max(int(np.floor(z0)), 0), min(int(np.ceil(z0 + c.height)) + 1, Z)
        if y1 <= y0 or x1 <= x0 or zhi <= zlo:
            continue
        sl = (slice(zlo, zhi), slice(y0, y1), slice(x0, x1))
        zz = (np.arange(zlo, zhi, dtype=np.float32) - z0)[:, None, None]
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        # cell: half-ellipsoid dome with an irregular outline
        dy, dx = yy - c.cy, (xx - c.cx) * x_over_y
        ca, sa = np.cos(c.angle), np.sin(c.angle)
        u, v = (dx * ca + dy * sa) / c.a, (-dx * sa + dy * ca) / c.b
        rho = np.sqrt(u * u + v * v) / _harmonic(np.arctan2(dy, dx), c.harm)
        zn = zz / c.height
        d = np.sqrt(rho[None] ** 2 + zn**2) + 0.07 * rough[sl]
        d = np.where(zz >= -0.5, d, np.inf).astype(np.float32)
        # nucleus: irregular ellipsoid, scaled by the treatment
        dy, dx = yy - c.ny, (xx - c.nx) * x_over_y
        ca, sa = np.cos(c.n_angle), np.sin(c.n_angle)
        u, v = (dx * ca + dy * sa) / (c.na * fx), (-dx * sa + dy * ca) / (c.nb * fx)
        nrho = np.sqrt(u * u + v * v) / _harmonic(np.arctan2(dy, dx), c.n_harm)
        nzz = (zz - (c.nz - z0)) / (c.nc * fz)
        dn = (np.sqrt(nrho[None] ** 2 + nzz**2) + 0.03 * rough[sl]).astype(np.float32)
        deff = np.where(dn < 1, dn - 2.0, d)  # own nucleus always wins
        bview = best[sl]
        win = deff < bview
        bview[win] = deff[win]
        lab[sl][win] = i
        dnuc[sl][win] = dn[win]
        dcell[sl][win] = d[win]
    labels = np.where(best < 1, lab, 0).astype(np.uint32)
    # keep ids consecutive (a cell may have lost every voxel to neighbours or the border)
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(len(cells) + 1, np.uint32)  # drawn cell index -> final id (0: vanished)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint32)
    if present.size != len(cells):
        labels = lut[labels]
    nuclei = np.where(dnuc < 1, labels, 0).astype(np.uint32)
    return labels, nuclei, dnuc, dcell, lut
