"""How to audit (:class:`AuditSettings`) and the checks every entry point runs on its arguments
(:func:`check_audit_arguments`): typed errors that name the argument and the fix, arrays accepted as images."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.audit.scoring import SCORE_KINDS
from napari_gradcamo.io.images import Image, ImageError, as_label_volume
from napari_gradcamo.models.metadata import ModelBundle


@dataclass
class AuditSettings:
    """How to audit: CAM method, layer (None = default), target class (None = predicted), batching, which
    score flags a cell below which threshold, and whether to add the occlusion drops.

    The default flag, ``normalised < 0.0``, marks cells that get no more attention than a uniform map would
    give them: it means the same for small and large cells (see docs/interpreting-scores.md). The paper's
    rule is ``flag_on="gradcamo", threshold=0.5``.

    Parameters
    ----------
    method : str
        ``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``, ``xgradcam`` or ``eigencam`` (2D models also
        ``scorecam``, ``ablationcam``).
    target_layer : str, optional
        The layer to explain (``gradcamo layers`` lists them); default: the checkpoint's, else the most
        downsampled layer that still resolves more than one z-plane.
    target_class : str or int, optional
        Class name or index to explain; default: each cell's predicted class.
    batch_size : int
        Cells per forward/backward pass.
    device : str, optional
        ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    threshold : float
        Cells whose ``flag_on`` score is below it (or undefined) are flagged.
    channel_map : sequence of int, optional
        Image channel index for each model channel; default: matched by name.
    flag_on : str
        ``normalised``, ``lift`` or ``gradcamo``.
    occlusion : bool
        Add ``drop_cell_occluded`` and ``drop_context_occluded`` (one more forward pass, no gradients, over
        two occluded copies of each crop).
    planes : int, optional
        2D models on a z-stack: explain this many planes around each cell's centre.

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> settings = ng.AuditSettings(flag_on="gradcamo", threshold=0.5)   # the paper's rule
    >>> settings.validate()
    >>> try:
    ...     ng.AuditSettings(threshold=2.0).validate()
    ... except ValueError as error:
    ...     print(error)
    threshold 2.0 is outside the range of normalised (-inf..1); NaN would flag nothing.
    """

    method: str = "gradcam"
    target_layer: str | None = None
    target_class: str | int | None = None
    batch_size: int = 8
    device: str | None = "auto"
    threshold: float = 0.0
    channel_map: Sequence[int] | None = None
    flag_on: str = "normalised"
    occlusion: bool = False
    #: Arithmetic precision of the model's layers: "fp32" (default, exact), "bf16" (autocast; CPUs with AMX or
    #: AVX512-BF16, CUDA) or "fp16" (CUDA). Maps and scores are always computed in float32.
    precision: str = "fp32"
    #: 2D models only: explain this many z-planes around each cell's centre, plane by plane (None: the
    #: checkpoint's crop depth, i.e. one plane). Class probabilities are averaged over the planes.
    planes: int | None = None

    def validate(self) -> None:
        """Refuse out-of-range values (never coerce them): batch size ≥ 1, a known score to flag on, a
        threshold in that score's range (gradcamo 0..1, normalised ≤ 1, lift ≥ 0; NaN flags nothing), and
        text where text is expected (method, layer, device)."""
        _check_settings_types(self)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size!r} must be a whole number ≥ 1.")
        if self.flag_on not in SCORE_KINDS:
            raise ValueError(f"flag_on {self.flag_on!r} is not a score; use one of {', '.join(SCORE_KINDS)}.")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r} must be fp32, bf16 (CPUs with AMX/AVX512-BF16, CUDA) "
                             "or fp16 (CUDA).")
        low, high = {"gradcamo": (0.0, 1.0), "normalised": (-math.inf, 1.0), "lift": (0.0, math.inf)}[self.flag_on]
        if not isinstance(self.threshold, numbers.Real) or not low <= float(self.threshold) <= high:
            raise ValueError(f"threshold {self.threshold!r} is outside the range of {self.flag_on} "
                             f"({low:g}..{high:g}); NaN would flag nothing.")


def _check_settings_types(settings: "AuditSettings") -> None:
    """The fields of :class:`AuditSettings` whose wrong type would otherwise fail deep inside torch."""
    from napari_gradcamo.audit.cam import CAM_METHODS, CAM_METHODS_2D

    if not isinstance(settings.method, str) or not settings.method.strip():
        raise ValueError(f"method {settings.method!r} must be the name of a CAM method: "
                         f"{', '.join(CAM_METHODS)} (2D models also {', '.join(CAM_METHODS_2D)}).")
    if settings.target_layer is not None and not isinstance(settings.target_layer, str):
        raise ValueError(f"target_layer {settings.target_layer!r} must be a layer name (text; see "
                         "'gradcamo layers MODEL') or None for the model's default.")
    if settings.target_class is not None and (isinstance(settings.target_class, bool)
                                              or not isinstance(settings.target_class, (str, numbers.Integral))):
        raise ValueError(f"target_class {settings.target_class!r} must be a class name, a class index or None "
                         "(the predicted class).")
    if not isinstance(settings.flag_on, str):
        raise ValueError(f"flag_on {settings.flag_on!r} is not a score; use one of {', '.join(SCORE_KINDS)}.")
    if not isinstance(settings.occlusion, (bool, np.bool_)):
        raise ValueError(f"occlusion {settings.occlusion!r} must be True or False.")
    if settings.planes is not None and (isinstance(settings.planes, bool)
                                        or not isinstance(settings.planes, numbers.Integral) or settings.planes < 1):
        raise ValueError(f"planes {settings.planes!r} must be a whole number ≥ 1 or None.")
    if settings.channel_map is not None:
        _integers(settings.channel_map, "channel_map", "one image channel index per model channel, e.g. [0, 1, 2]")
    _check_device(settings.device)


def _check_device(device) -> None:
    """Refuse a device name torch does not know or this machine does not have, naming the ones it has."""
    if device is None:
        return
    name = device.strip().lower() if isinstance(device, str) else None
    base, _, index = (name or "").partition(":")
    if name is None or not (name in ("auto", "cpu", "mps", "cuda") or (base == "cuda" and index.isdigit())):
        raise ValueError(f"device {device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    if base in ("auto", "cpu"):
        return
    import torch

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if (base == "mps" and has_mps) or (base == "cuda" and torch.cuda.is_available()
                                       and int(index or 0) < torch.cuda.device_count()):
        return
    have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if has_mps else [])
    raise ValueError(f"device {device!r}: this machine has no such device (it has {', '.join(have)}); "
                     "use 'auto' or 'cpu'.")


def _integers(values, name: str, fix: str) -> list[int]:
    """``values`` as a list of whole numbers: one integer or a collection of them (text, floats and bools
    are refused, never read digit by digit or rounded)."""
    if isinstance(values, (numbers.Integral, np.integer)) and not isinstance(values, (bool, np.bool_)):
        return [int(values)]
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, (Sequence, set, frozenset, np.ndarray, pd.Index,
                                                                          pd.Series, range)):
        raise ValueError(f"{name} {values!r} must be {fix}, not {type(values).__name__}.")
    items = list(np.asarray(values).ravel()) if isinstance(values, (np.ndarray, pd.Index, pd.Series)) else list(values)
    bad = [v for v in items if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer))]
    if bad:
        raise ValueError(f"{name} must be {fix}; {bad[:3]!r} {'is' if len(bad) == 1 else 'are'} not whole numbers.")
    return [int(v) for v in items]


def _array_image(array: np.ndarray, label_shape: tuple) -> Image:
    """A plain array as an :class:`Image`, its axes read from the labels' shape (Z, Y, X)."""
    from napari_gradcamo.io.images import make_image

    shape = tuple(array.shape)
    axes = None
    if array.ndim == 4 and shape[1:] == label_shape:
        axes = "CZYX"
    elif array.ndim == 3 and shape == label_shape:
        axes = "ZYX"
    elif array.ndim == 3 and label_shape[0] == 1 and shape[1:] == label_shape[1:]:
        axes = "CYX"
    elif array.ndim == 2 and (1, *shape) == label_shape:
        axes = "YX"
    if axes is None:
        raise ImageError(f"image is an array of shape {shape}; give (C, Z, Y, X) or (Z, Y, X) matching the labels' "
                         f"shape {label_shape}, or build an Image with napari_gradcamo.io.images.make_image(array, "
                         "axes=...).")
    return make_image(array, axes)


def check_audit_arguments(image, labels, bundle, settings, only_labels):
    """The arguments of :func:`run_audit` / :func:`iter_audit` checked as the command line checks its
    options; returns them ready to use: ``image`` as an :class:`Image` (a plain array of shape (C, Z, Y, X),
    (Z, Y, X) or (Y, X) matching the labels is accepted), ``settings`` as :class:`AuditSettings` (a dict of
    its fields is accepted), ``only_labels`` as a list of ints or None. Raises :class:`ImageError` or
    ``ValueError`` naming the argument and the fix."""
    if not isinstance(bundle, ModelBundle):
        raise ValueError(f"bundle must be a ModelBundle (napari_gradcamo.load_checkpoint(PATH)), not "
                         f"{type(bundle).__name__}.")
    if isinstance(settings, dict):
        known = {f.name for f in dataclasses.fields(AuditSettings)}
        unknown = sorted(str(k) for k in settings if k not in known)
        if unknown:
            raise ValueError(f"settings has unknown field(s) {unknown}; AuditSettings has {sorted(known)}.")
        settings = AuditSettings(**settings)
    elif settings is None:
        settings = AuditSettings()
    elif not isinstance(settings, AuditSettings):
        raise ValueError(f"settings must be an AuditSettings (or a dict of its fields), not {type(settings).__name__}.")
    settings.validate()
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__array__") and not isinstance(labels, (list, tuple)):
        raise ImageError(f"labels must be an integer array (Z, Y, X) or (Y, X) of cell ids, not {type(labels).__name__}; "
                         "read a file with napari_gradcamo.read_labels(PATH).")
    labels = as_label_volume(labels)
    if isinstance(image, Image):
        data = image.data
        if getattr(data, "ndim", None) != 4 or len(image.channel_names) != data.shape[0] \
                or np.dtype(getattr(data, "dtype", object)).kind not in "biuf":
            raise ImageError(f"image is an Image whose data (shape {getattr(data, 'shape', '?')}, dtype "
                             f"{getattr(data, 'dtype', type(data).__name__)}) is not real numbers (C, Z, Y, X) with one "
                             f"of its {len(image.channel_names)} channel names per channel; build it with "
                             "napari_gradcamo.io.images.make_image or read_image.")
    else:
        if isinstance(image, (str, bytes)) or not hasattr(image, "__array__") and not isinstance(image, (list, tuple)):
            raise ImageError(f"image must be an Image (napari_gradcamo.read_image(PATH)) or an array, not "
                             f"{type(image).__name__}.")
        image = _array_image(np.asarray(image), labels.shape)
    if only_labels is not None:
        only_labels = _integers(only_labels, "only_labels", "a whole number or a list of label ids, e.g. [1, 2]")
    return image, labels, settings, only_labels
