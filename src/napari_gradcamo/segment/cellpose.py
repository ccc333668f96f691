"""Cell segmentation with cellpose 3 or 4, without Qt: stitched 2D (the paper's mode) or true 3D.

``segment(image, settings, progress, cancel)`` returns a ``ZYX`` ``uint32`` label volume, labels
1..N. In ``"stitch2d"`` mode cellpose runs slice by slice (progress after each slice, cancel honoured
between slices) and the 2D masks are joined across z with cellpose's own ``utils.stitch3D``; in
``"3d"`` mode cellpose runs once on the whole stack (progress and cancel at start and end only:
neither cellpose 3 nor cellpose 4 reports from inside its 3D run).

Intensities are normalised once over the whole stack (1st–99th percentile per channel, as cellpose
does for stitched stacks), so every slice sees the same scaling.

The installed cellpose decides the models (:func:`available_models`); this module is the same for
both and hands the version-specific parts (model names, files, checks) to :mod:`.cellpose3` or
:mod:`.cellpose4`. cellpose 3: a model name (``"cyto3"``, ``"nuclei"``, …; downloaded from cellpose's
website at first use), :data:`GENERALIST_MODEL` (MouseLand's generalist "cyto" network converted from
the package index, see :mod:`napari_gradcamo.segment.weights`), or a cellpose-3 model file. cellpose 4:
``"cpsam"`` (Cellpose-SAM, downloaded from cellpose's hub at first use) or a cpsam file, e.g. one
fine-tuned by the user. Without network a missing named model raises :class:`SegmentationError`
naming the folder to copy the file into. Cellpose and torch are imported lazily.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from napari_gradcamo.io.atomic import temp_file
from napari_gradcamo.io.images import Image
from napari_gradcamo.progress import CancelToken, ProgressCallback, Steps, check, drain
from napari_gradcamo.segment.model_file import GENERALIST_MODEL, SegmentationError, load_state_dict  # noqa: F401

MODES = ("stitch2d", "3d")
DOWNLOAD_TIMEOUT_S = 30


# --------------------------------------------------------------------------- cellpose version


def cellpose_major() -> int:
    """The major version of the installed cellpose (read from its metadata; cellpose is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("cellpose")
    except PackageNotFoundError as exc:
        raise SegmentationError(
            "cellpose is not installed: pip install 'napari-gradcamo' (cellpose 4) or "
            "'napari-gradcamo[cellpose3]' (cellpose 3)."
        ) from exc
    return int(text.split(".")[0])


def _backend():
    """The module that knows the installed cellpose: :mod:`.cellpose3` or :mod:`.cellpose4`."""
    major = cellpose_major()
    if major == 3:
        import napari_gradcamo.segment.cellpose3 as backend
    elif major == 4:
        import napari_gradcamo.segment.cellpose4 as backend
    else:
        raise SegmentationError(
            f"cellpose {major} is installed; this tool runs cellpose 3 or 4 "
            "(pip install 'cellpose>=4,<5' or 'napari-gradcamo[cellpose3]')."
        )
    return backend


def default_model() -> str:
    """The installed cellpose's default model: ``cpsam`` for cellpose 4, ``cyto3`` for cellpose 3."""
    try:
        return "cpsam" if cellpose_major() >= 4 else "cyto3"
    except SegmentationError:
        return "cyto3"


@dataclass
class SegmentationSettings:
    """Cellpose settings. Channel indices refer to the :class:`Image` channels (0-based).

    ``cyto_channel`` is the stain that outlines whole cells, ``nucleus_channel`` the nuclear stain.
    Give one of them for a one-channel model input (e.g. nuclei only with ``model="nuclei"``), both
    for cytoplasm models that use the nucleus as a second channel. With a one-channel image both may
    be left as None. ``diameter`` is the typical cell diameter in pixels (None: the model's own
    training diameter, i.e. no rescaling). ``anisotropy`` (z step / xy pixel size, "3d" mode only)
    defaults to the image's voxel size.

    Parameters
    ----------
    model : str
        A cellpose model name (``cpsam`` with cellpose 4; ``cyto3``, ``nuclei``, ``generalist_cyto`` … with
        cellpose 3) or a model file's path. Default: the installed cellpose's default.
    nucleus_channel, cyto_channel : int, optional
        Image channel indices of the nuclear and the whole-cell stain.
    diameter : float, optional
        Typical cell diameter in pixels.
    mode : str
        ``"stitch2d"`` (plane by plane, joined across z; the practical mode on a CPU) or ``"3d"``.
    stitch_threshold : float
        Overlap (IoU) above which masks in neighbouring planes are joined (``"stitch2d"``).
    anisotropy : float, optional
        z step / xy pixel size (``"3d"``); default: from the image's voxel size.
    min_size : int
        Masks smaller than this many voxels are removed (after stitching); -1 keeps all.
    flow_threshold, cellprob_threshold : float
        Cellpose's own thresholds.
    normalize_percentiles : tuple of float
        Per-channel intensity percentiles mapped to 0 and 1 over the whole stack.
    gpu : bool, optional
        Use a GPU (None: when one is available).
    batch_size : int
        Planes or tiles per network call.

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> settings = ng.SegmentationSettings(nucleus_channel=0, cyto_channel=3, diameter=30)
    >>> settings.mode, settings.stitch_threshold
    ('stitch2d', 0.3)
    """

    model: str = default_model()
    nucleus_channel: Optional[int] = None
    cyto_channel: Optional[int] = None
    diameter: Optional[float] = None
    mode: str = "stitch2d"
    stitch_threshold: float = 0.3
    anisotropy: Optional[float] = None
    min_size: int = 15
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    normalize_percentiles: tuple[float, float] = (1.0, 99.0)
    gpu: Optional[bool] = None
    batch_size: int = 8


# --------------------------------------------------------------------------- validation


def _check_channel(name: str, index, n_channels: int, image: Image) -> None:
    if index is None:
        return
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise SegmentationError(f"{name} must be a channel index (an integer) or None, got {index!r}.")
    if not 0 <= int(index) < n_channels:
        names = ", ".join(f"{i}={n}" for i, n in enumerate(image.channel_names))
        raise SegmentationError(
            f"{name} {index} is out of range: the image has {n_channels} channel(s) ({names}); "
            f"use an index from 0 to {n_channels - 1}."
        )


def _is_number(value, whole: bool = False) -> bool:
    """A real number (an int when ``whole``), not a bool and not text: '0.4' is refused, never parsed."""
    kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
    return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))


def _check_types(s: SegmentationSettings) -> None:
    """Each numeric setting must be a number before its range is checked (text raised TypeError before)."""
    numbers_ = {"diameter": s.diameter, "stitch_threshold": s.stitch_threshold, "anisotropy": s.anisotropy,
                "flow_threshold": s.flow_threshold, "cellprob_threshold": s.cellprob_threshold}
    for name, value in numbers_.items():
        if value is not None and not _is_number(value) or value is None and name not in ("diameter", "anisotropy"):
            raise SegmentationError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    for name, value in {"min_size": s.min_size, "batch_size": s.batch_size}.items():
        if not _is_number(value, whole=True):
            raise SegmentationError(f"{name} must be a whole number, got {value!r} ({type(value).__name__}).")
    pair = s.normalize_percentiles
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(_is_number(v) for v in pair):
        raise SegmentationError(f"normalize_percentiles must be two numbers (low, high), e.g. (1.0, 99.0); got {pair!r}.")
    if not isinstance(s.mode, str):
        raise SegmentationError(f"mode must be 'stitch2d' or '3d', got {s.mode!r}.")
    if s.gpu is not None and not isinstance(s.gpu, (bool, np.bool_)):
        raise SegmentationError(f"gpu must be True, False or None (automatic), got {s.gpu!r}.")


def validate_settings(image: Image, settings: SegmentationSettings) -> None:
    """Raise :class:`SegmentationError` naming the first bad parameter."""
    if not isinstance(image, Image) or image.data.ndim != 4:
        raise SegmentationError("segment() needs a napari_gradcamo.io.images.Image (CZYX data).")
    if not isinstance(settings, SegmentationSettings):
        raise SegmentationError(f"settings must be a SegmentationSettings, not {type(settings).__name__}; "
                                "e.g. SegmentationSettings(nucleus_channel=0).")
    _check_types(settings)
    s = settings
    if s.mode not in MODES:
        raise SegmentationError(f"Unknown mode {s.mode!r}; use 'stitch2d' (2D per slice, stitched) or '3d'.")
    n = image.n_channels
    _check_channel("nucleus_channel", s.nucleus_channel, n, image)
    _check_channel("cyto_channel", s.cyto_channel, n, image)
    if s.nucleus_channel is None and s.cyto_channel is None and n > 1:
        raise SegmentationError(
            f"The image has {n} channels ({', '.join(image.channel_names)}); set cyto_channel and/or "
            "nucleus_channel to say which one(s) cellpose should segment."
        )
    if s.nucleus_channel is not None and s.nucleus_channel == s.cyto_channel:
        raise SegmentationError(
            "cyto_channel and nucleus_channel are the same channel; give only one of them to segment "
            "a single stain."
        )
    if s.diameter is not None and not (isinstance(s.diameter, (int, float)) and math.isfinite(s.diameter)
                                       and s.diameter > 0):
        raise SegmentationError(
            f"diameter must be a positive number of pixels (or None for the model's own), got {s.diameter!r}."
        )
    if not (isinstance(s.stitch_threshold, (int, float)) and 0 < s.stitch_threshold <= 1):
        raise SegmentationError(
            f"stitch_threshold must be in (0, 1] (the IoU needed to join masks on neighbouring slices), "
            f"got {s.stitch_threshold!r}."
        )
    if s.anisotropy is not None and not (math.isfinite(s.anisotropy) and s.anisotropy > 0):
        raise SegmentationError(f"anisotropy must be a positive number (z step / xy pixel), got {s.anisotropy!r}.")
    if int(s.min_size) != s.min_size or s.min_size < -1:
        raise SegmentationError(f"min_size must be an integer ≥ -1 (-1 keeps all masks), got {s.min_size!r}.")
    if not (math.isfinite(s.flow_threshold) and s.flow_threshold >= 0):
        raise SegmentationError(f"flow_threshold must be ≥ 0, got {s.flow_threshold!r}.")
    if not math.isfinite(s.cellprob_threshold):
        raise SegmentationError(f"cellprob_threshold must be a finite number, got {s.cellprob_threshold!r}.")
    lo, hi = s.normalize_percentiles
    if not 0 <= lo < hi <= 100:
        raise SegmentationError(f"normalize_percentiles must satisfy 0 ≤ low < high ≤ 100, got {s.normalize_percentiles!r}.")
    if int(s.batch_size) != s.batch_size or s.batch_size < 1:
        raise SegmentationError(f"batch_size must be a positive integer, got {s.batch_size!r}.")
    if not isinstance(s.model, (str, os.PathLike)) or not str(s.model).strip():
        raise SegmentationError("model must be a cellpose model name or a model file path.")


# --------------------------------------------------------------------------- models


def available_models() -> list[str]:
    """Model names the installed cellpose can run, for menus (a model file path is always accepted too).

    cellpose 3: the offline generalist weights (:data:`GENERALIST_MODEL`), then ``cyto3``, ``nuclei``, …;
    cellpose 4: ``cpsam`` (and ``cpsam_v2`` on cellpose ≥ 4.2); both followed by the user's own models.
    """
    backend = _backend()
    names = backend.model_names()
    return [GENERALIST_MODEL, *names] if backend.MAJOR == 3 else names


def download_model_file(name: str, target: Path, url: str, hint: str) -> Path:
    """Download ``url`` to ``target`` (verified TLS, atomic); a failure raises with ``hint``."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            tmp = str(temp_file(folder, prefix=f".{target.name}.", suffix=".part"))
            try:
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        import ssl

        tls = isinstance(getattr(exc, "reason", exc), ssl.SSLError)
        note = " (the TLS certificate check failed; it is never switched off here)" if tls else ""
        raise SegmentationError(
            f"The cellpose model '{name}' is not in {folder} and could not be downloaded from {url} "
            f"({exc}){note}. {hint}"
        ) from exc
    return target


def _named_model_file(backend, name: str) -> Path:
    """The file of a named model in cellpose's model folder, downloaded first when it is not there."""
    target, url = backend.named_model_source(name)
    if target.is_file():
        return target
    return download_model_file(name, target, url, backend.offline_hint(name))


_MODEL_CACHE: dict = {}
_MODEL_LOCK = threading.Lock()


def resolve_model(model: str | os.PathLike) -> tuple[str, str]:
    """Return ``("name", name)`` for a model name of the installed cellpose or ``("file", path)`` for a file."""
    text = os.fspath(model).strip()
    backend = _backend()
    if text == GENERALIST_MODEL:
        if backend.MAJOR != 3:
            raise SegmentationError(
                f"'{GENERALIST_MODEL}' is a cellpose 3 network, but cellpose {backend.MAJOR} is installed. "
                f"Use one of {', '.join(backend.model_names())} or a cellpose-4 model file, or install "
                "cellpose 3 (pip install 'napari-gradcamo[cellpose3]')."
            )
        from napari_gradcamo.segment.weights import WeightsError, generalist_cyto_model

        try:
            return "file", str(generalist_cyto_model())
        except WeightsError as exc:
            raise SegmentationError(str(exc)) from exc
    path = Path(text).expanduser()
    if path.is_file():
        return "file", str(path.resolve())
    names = backend.model_names()
    if text in names:
        return "name", text
    if path.suffix or os.sep in text or "/" in text:
        raise SegmentationError(f"Model file {path} does not exist. {backend.offline_hint()}")
    extra = f", nor '{GENERALIST_MODEL}'" if backend.MAJOR == 3 else ""
    raise SegmentationError(
        f"'{text}' is neither a model name of the installed cellpose {backend.MAJOR} "
        f"(e.g. {', '.join(names[:3])}) nor an existing model file{extra}."
    )


def load_model(settings: SegmentationSettings):
    """A ``cellpose.models.CellposeModel`` for the settings (the last one is kept for reuse)."""
    kind, value = resolve_model(settings.model)
    import torch

    gpu = torch.cuda.is_available() if settings.gpu is None else bool(settings.gpu)
    stamp = os.stat(value).st_mtime_ns if kind == "file" else None  # a rewritten file is reloaded
    key = (kind, value, stamp, gpu)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        backend = _backend()
        path = _named_model_file(backend, value) if kind == "name" else Path(value)
        model = backend.build_model(kind, value, path, gpu)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = model
        return model


# --------------------------------------------------------------------------- segmentation


def _model_input(image: Image, settings: SegmentationSettings) -> np.ndarray:
    """``ZYX2`` float32: channel 0 the stain to segment, channel 1 the nuclei (or zeros), normalised over the stack."""
    cyto, nuc = settings.cyto_channel, settings.nucleus_channel
    if cyto is None and nuc is None:
        first, second = 0, None
    elif cyto is None:
        first, second = nuc, None
    else:
        first, second = cyto, nuc
    Z, Y, X = image.spatial_shape
    x = np.zeros((Z, Y, X, 2), np.float32)
    lo_p, hi_p = settings.normalize_percentiles
    for out, c in enumerate((first, second)):
        if c is None:
            continue
        channel = image.data[c]
        lo, hi = np.percentile(channel, [lo_p, hi_p])
        if hi > lo:
            x[..., out] = (channel - lo) / (hi - lo)
    return x


# explicit so that cellpose's shared default dict is neither read nor changed
_NO_NORMALIZATION = {
    "normalize": False, "lowhigh": None, "percentile": None, "norm3D": False, "invert": False,
    "sharpen_radius": 0, "smooth_radius": 0, "tile_norm_blocksize": 0, "tile_norm_smooth3D": 1,
}


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels).astype(np.uint32, copy=False)
    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


def segment(
    image: Image,
    settings: SegmentationSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Segment ``image`` with cellpose; returns ``ZYX`` ``uint32`` labels 1..N (0 = background).
    :func:`iter_segment` run to its end, its steps handed to ``progress``.

    Parameters
    ----------
    image : Image
        The stains (``CZYX``).
    settings : SegmentationSettings, optional
        Model, channels, diameter, mode; default ``SegmentationSettings()``.
    progress : callable, optional
        Called as ``progress(done, total, message)`` after each plane (stitched 2D) or step.
    cancel : CancelToken, optional
        Checked between planes; a cancel raises :class:`~napari_gradcamo.progress.Cancelled`.

    Returns
    -------
    numpy.ndarray
        Labels, ``ZYX`` ``uint32``, 0 = background, cells numbered 1..N.

    Raises
    ------
    SegmentationError
        A bad setting, or a model that cannot be found or loaded (the message says what to give instead).

    Examples
    --------
    A named cellpose model is downloaded at first use (``generalist_cyto`` from the package index), so this
    example needs that network access once:

    >>> import napari_gradcamo as ng
    >>> from napari_gradcamo.synthetic.experiment import demo_field
    >>> image = demo_field().image                       # 5 stains, 12 × 128 × 128
    >>> settings = ng.SegmentationSettings(model="generalist_cyto", nucleus_channel=0, cyto_channel=3,
    ...                                    diameter=20)
    >>> labels = ng.segment(image, settings)             # doctest: +SKIP
    >>> labels.shape, labels.dtype                       # doctest: +SKIP
    ((12, 128, 128), dtype('uint32'))
    """
    return drain(iter_segment(image, settings, cancel), progress)


def iter_segment(image: Image, settings: SegmentationSettings | None = None,
                 cancel: CancelToken | None = None) -> Steps[np.ndarray]:
    """Segmentation as steps: stitched 2D yields ``(done, Z + 1, message)`` after each slice and after
    stitching and raises :class:`~napari_gradcamo.progress.Cancelled` between slices when ``cancel`` is set;
    3D yields ``(0, 1)`` and ``(1, 1)``: cellpose's single 3D run cannot be stopped part-way, so a cancel acts
    before and after it."""
    settings = settings or SegmentationSettings()
    validate_settings(image, settings)
    check(cancel, "segmentation")
    model = load_model(settings)
    x = _model_input(image, settings)
    Z, Y, X = image.spatial_shape
    common = dict(
        channels=None, normalize=dict(_NO_NORMALIZATION),
        diameter=settings.diameter, flow_threshold=settings.flow_threshold,
        cellprob_threshold=settings.cellprob_threshold, batch_size=int(settings.batch_size),
    )

    if settings.mode == "3d" and Z > 1:
        anisotropy = settings.anisotropy if settings.anisotropy is not None else image.anisotropy
        yield (0, 1, f"cellpose 3D on {Z}×{Y}×{X} voxels (anisotropy {anisotropy:.2f})")
        check(cancel, "segmentation")
        masks = model.eval(x, z_axis=0, channel_axis=3, do_3D=True, anisotropy=anisotropy, min_size=int(settings.min_size),
                           **common)[0]
        check(cancel, "segmentation")
        labels = _relabel(np.asarray(masks).reshape(Z, Y, X))
        yield (1, 1, f"cellpose 3D done: {int(labels.max())} cells")
        return labels

    from cellpose import utils as cp_utils

    total = Z + 1
    masks = np.zeros((Z, Y, X), np.uint32)
    yield (0, total, f"cellpose: slice 1 of {Z}")
    for z in range(Z):
        check(cancel, "segmentation")
        # like cellpose's own stitched mode: no size filter per slice, one after stitching
        masks[z] = model.eval(x[z], channel_axis=2, min_size=-1 if Z > 1 else int(settings.min_size), **common)[0]
        yield (z + 1, total, f"cellpose: slice {z + 1} of {Z} segmented")
    check(cancel, "segmentation")
    if Z > 1:
        masks = cp_utils.stitch3D(masks, stitch_threshold=float(settings.stitch_threshold))
        masks = cp_utils.fill_holes_and_remove_small_masks(masks, min_size=int(settings.min_size))
    labels = _relabel(masks)
    yield (total, total, f"stitched {Z} slice(s): {int(labels.max())} cells")
    return labels
