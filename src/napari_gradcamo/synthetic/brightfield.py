"""Transmitted-light (brightfield) images of a synthetic field's cells, paired with its stains.

Cells are nearly transparent: in focus they barely absorb, out of focus their phase shows as dark and
bright rims.  The rendering follows the transport-of-intensity approximation of a thin phase object:

* optical path difference ``OPD(y, x) = Σ_z Δn(z, y, x) · dz`` from the field's own geometry: cytoplasm
  (Δn = 0.020), nucleus (0.035), a dense ridge on every cell border (membrane + cortex) and a weak
  refractive texture inside cells; thick domes and nuclei therefore give the strongest contrast;
* at defocus ``d`` (µm) the intensity is ``I0 · (1 - a·A - γ · d · ∇²(G_σ(d) * OPD))`` with a slight
  absorption ``A`` (nucleus and cell thickness) so the in-focus plane is not blank, and a blur ``σ`` that
  grows with ``|d|``; the contrast of edges flips sign through focus, as in a real brightfield stack;
* uneven illumination (a tilted, vignetted, slowly varying field that is new for every field), then
  photon (shot) noise and camera read noise.

Nothing here depends on the stains' pixel values: class signal reaches the brightfield only through the
cells' geometry (the treated nucleus grows), so labels can add information a brightfield model lacks
(DNA brightness, mitochondrial fragmentation, ER texture).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_gradcamo.synthetic.generator import SyntheticField

DELTA_N_CYTOPLASM = 0.020
DELTA_N_NUCLEUS = 0.035
DELTA_N_BORDER = 0.06  # dense membrane/cortex ridge, one pixel wide before the blur
PHASE_CONTRAST = 2.2  # γ: relative intensity change per (µm defocus · µm OPD / µm²)
ABSORPTION = 0.08  # relative darkening per µm of path difference
PHOTONS = 3000.0  # mean photo-electrons per pixel at full illumination
READ_NOISE = 4.0
DEFAULT_DEFOCUS_UM = (-4.0, 0.0, 4.0)  # the three planes of the paper: below, in and above focus


def focal_plane(field: SyntheticField) -> int:
    """The z index where the nuclei are widest (the plane a widefield user would focus on)."""
    area = (field.nuclei > 0).reshape(field.nuclei.shape[0], -1).sum(1)
    return int(np.argmax(area)) if area.any() else field.nuclei.shape[0] // 2


def _optical_path(field: SyntheticField, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(OPD, absorbing path) maps in µm, both ``YX`` float64."""
    vz, vy, _ = field.image.voxel_size
    in_cell = field.labels > 0
    in_nuc = field.nuclei > 0
    texture = ndi.gaussian_filter(rng.standard_normal(field.labels.shape), (0.5, 1.0, 1.0))
    texture /= texture.std() or 1.0
    dn = DELTA_N_CYTOPLASM * in_cell + (DELTA_N_NUCLEUS - DELTA_N_CYTOPLASM) * in_nuc
    dn = dn * (1.0 + 0.15 * texture * in_cell)
    opd = dn.sum(0) * vz
    plane = field.labels[focal_plane(field)]
    border = np.zeros(plane.shape, bool)
    for axis in (0, 1):
        step = np.diff(plane.astype(np.int64), axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        border[tuple(lo)] |= step
        border[tuple(hi)] |= step
    opd = opd + DELTA_N_BORDER * border * vy
    absorbing = (in_cell.sum(0) * 0.3 + in_nuc.sum(0)) * vz * DELTA_N_CYTOPLASM
    return opd, absorbing


def _illumination(shape, rng: np.random.Generator) -> np.ndarray:
    Y, X = shape
    yy = np.linspace(-1, 1, Y)[:, None]
    xx = np.linspace(-1, 1, X)[None, :]
    tilt = rng.uniform(-0.12, 0.12, 2)
    slow = ndi.gaussian_filter(rng.standard_normal(shape), max(Y, X) / 6.0)
    slow /= np.abs(slow).max() or 1.0
    return (1.0 + tilt[0] * yy + tilt[1] * xx) * (1.0 - 0.15 * (yy**2 + xx**2) / 2) * (1.0 + 0.05 * slow)


def _plane(opd, absorbing, illumination, defocus_um, pixel_um, rng) -> np.ndarray:
    sigma = (0.6 + 0.25 * abs(defocus_um)) / pixel_um
    laplacian = ndi.gaussian_laplace(opd, sigma) / pixel_um**2
    contrast = 1.0 - ABSORPTION * absorbing - PHASE_CONTRAST * defocus_um * laplacian
    expected = PHOTONS * illumination * np.clip(contrast, 0.05, None)
    counts = rng.poisson(expected).astype(np.float64) + rng.normal(0.0, READ_NOISE, expected.shape)
    return (counts / PHOTONS).astype(np.float32)


def render_brightfield(
    field: SyntheticField,
    defocus_um: Sequence[float] = DEFAULT_DEFOCUS_UM,
    *,
    seed: int | None = None,
) -> np.ndarray:
    """Brightfield planes ``(P, Y, X)`` float32 (≈1 = full illumination) at the given defocus values (µm).

    Positive defocus lies above the focal plane.  ``seed`` (default: the field's seed) fixes the
    illumination, texture and noise, so the same field always gives the same images.
    """
    defocus = [float(d) for d in np.atleast_1d(np.asarray(defocus_um, dtype=float))]
    if not defocus or not all(np.isfinite(defocus)):
        raise ValueError(f"defocus_um must be one or more finite numbers (µm), got {defocus_um!r}.")
    rng = np.random.default_rng([int(field.metadata.get("seed", 0) if seed is None else seed), 0xB7F])
    opd, absorbing = _optical_path(field, rng)
    illumination = _illumination(opd.shape, rng)
    pixel = float(field.image.voxel_size[1])
    return np.stack([_plane(opd, absorbing, illumination, d, pixel, rng) for d in defocus])


def brightfield_stack(field: SyntheticField, *, seed: int | None = None) -> np.ndarray:
    """A brightfield z-stack ``(Z, Y, X)`` on the field's own z grid, focused on :func:`focal_plane`."""
    vz = float(field.image.voxel_size[0])
    focus = focal_plane(field)
    defocus = [(z - focus) * vz for z in range(field.labels.shape[0])]
    return render_brightfield(field, defocus, seed=seed)
