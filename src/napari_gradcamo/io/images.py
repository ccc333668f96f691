"""Read and validate microscopy images as channel-first ``CZYX`` float arrays."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

CANONICAL_AXES = "CZYX"
#: Largest label id accepted (the results table stores ids as int64).
MAX_LABEL_ID = 2**63 - 1


class ImageError(ValueError):
    """An image cannot be used; the message names the problem and the fix.

    Raised by :func:`read_image`, :func:`read_labels` and the audit for wrong axes, mismatched shapes,
    non-finite values, unreadable files and the like (the CLI turns it into exit code 2). A subclass of
    ``ValueError``.

    Examples
    --------
    >>> import numpy as np, napari_gradcamo as ng
    >>> np.save("field.npy", np.random.default_rng(0).random((2, 4, 16, 16), np.float32))
    >>> try:
    ...     ng.read_image("field.npy", axes="ZYX")      # three letters for four dimensions
    ... except ng.ImageError as error:
    ...     print(error)
    The image has 4 dimensions (2, 4, 16, 16) but axes 'ZYX' name 3; give one letter per dimension (e.g. 'ZCYX' for a 4D stack).
    """


@dataclass
class Image:
    """A multi-channel image, always stored as ``CZYX`` (2D images have Z = 1): float32, or the file's own
    8/16-bit integer type (exact in float32; crops are cut as float32).

    ``voxel_size`` is (z, y, x) in micrometres; ``channel_names`` has one entry per channel.
    :func:`read_image` returns one; build one directly from an array already in ``CZYX`` order.

    Parameters
    ----------
    data : numpy.ndarray
        The voxels, shape (C, Z, Y, X).
    channel_names : list of str
        One name per channel (matched to a model's channel names, case-insensitively).
    voxel_size : tuple of float, optional
        (z, y, x) in µm; default (1, 1, 1).
    source : str, optional
        Where the image came from (a file path), recorded in run records.
    metadata : dict, optional
        Anything else read from the file.

    Examples
    --------
    >>> import numpy as np, napari_gradcamo as ng
    >>> image = ng.Image(np.ones((1, 3, 8, 8), np.float32), ["DNA"], voxel_size=(2.0, 0.5, 0.5))
    >>> image.n_channels, image.spatial_shape, image.anisotropy
    (1, (3, 8, 8), 4.0)
    """

    data: np.ndarray
    channel_names: list[str]
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return self.data.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[1:])

    @property
    def anisotropy(self) -> float:
        """Ratio of z spacing to xy spacing, as cellpose expects it."""
        return float(self.voxel_size[0] / self.voxel_size[2])


def to_czyx(array: np.ndarray, axes: str) -> np.ndarray:
    """Reorder ``array`` with the given axes string (e.g. ``"ZCYX"``, ``"YX"``) to ``CZYX``."""
    axes = axes.upper()
    if len(set(axes)) != len(axes):
        raise ImageError(f"Axes '{axes}' repeat a letter; give each axis once, e.g. 'ZCYX'.")
    unknown = set(axes) - set(CANONICAL_AXES)
    if unknown:
        raise ImageError(
            f"Axes '{axes}' contain {''.join(sorted(unknown))}, which this tool does not read; "
            "use only C, Z, Y and X (select one time point before auditing)."
        )
    if "Y" not in axes or "X" not in axes:
        raise ImageError(f"Axes '{axes}' must include both Y and X.")
    if array.ndim != len(axes):
        raise ImageError(
            f"The image has {array.ndim} dimensions {tuple(array.shape)} but axes '{axes}' name "
            f"{len(axes)}; give one letter per dimension (e.g. 'ZCYX' for a 4D stack)."
        )
    for missing in "CZ":
        if missing not in axes:
            array = array[np.newaxis]
            axes = missing + axes
    return np.transpose(array, [axes.index(a) for a in CANONICAL_AXES])


def guess_axes(shape: Sequence[int]) -> str:
    """Guess axes from a shape: the smallest leading dimension (≤ 8) is the channel axis."""
    ndim = len(shape)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "CYX" if shape[0] <= 8 else "ZYX"
    if ndim == 4:
        return "CZYX" if shape[0] <= shape[1] else "ZCYX"
    raise ImageError(
        f"Cannot guess the axes of an image with shape {tuple(shape)}; pass axes explicitly "
        "(e.g. --axes ZCYX) and select one time point or position first."
    )


def validate(data: np.ndarray) -> None:
    """Refuse images that would make every score meaningless (NaN, Inf, constant)."""
    if data.size == 0:
        raise ImageError("The image is empty (a dimension has size 0).")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ImageError(f"The image has dtype {data.dtype}; expected integer or float pixels.")
    if np.issubdtype(data.dtype, np.floating):
        _refuse_float32_overflow(data)
        bad = ~np.isfinite(data)
        if bad.any():
            channels = sorted({int(c) for c in np.nonzero(bad.reshape(data.shape[0], -1).any(1))[0]})
            raise ImageError(
                f"The image holds {int(bad.sum())} NaN/Inf voxels (channels {channels}); replace them "
                "(e.g. numpy.nan_to_num) or mask the acquisition artefact before auditing."
            )
    flat = data.reshape(data.shape[0], -1)
    constant = [int(c) for c in range(flat.shape[0]) if flat[c].min() == flat[c].max()]
    if len(constant) == flat.shape[0]:
        raise ImageError(
            "Every channel of the image is constant; check that the right file or layer was given."
        )


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _refuse_float32_overflow(data: np.ndarray) -> None:
    """Images are computed in float32; refuse (never clip or scale silently) values float32 cannot hold."""
    if data.dtype.itemsize <= 4:
        return
    finite = np.isfinite(data)
    peak = float(np.abs(data[finite]).max()) if finite.any() else 0.0
    if peak > FLOAT32_MAX:
        raise ImageError(
            f"The image holds values up to {peak:.3g}, beyond float32's range (±{FLOAT32_MAX:.3g}) in which the "
            "model computes; every score would be NaN. Rescale the image (e.g. divide by its maximum) first."
        )


def make_image(
    array: np.ndarray,
    axes: str | None = None,
    channel_names: Sequence[str] | None = None,
    voxel_size: Sequence[float] | None = None,
    source: str = "",
) -> Image:
    """Build a validated :class:`Image` from an array with explicit (or guessed) axes."""
    if axes is not None and not isinstance(axes, str):
        raise ImageError(f"axes must be text such as 'ZCYX' (one letter per dimension), not {axes!r}.")
    if channel_names is not None and (isinstance(channel_names, str) or not isinstance(channel_names, (Sequence, np.ndarray))
                                      or not all(isinstance(n, str) for n in channel_names)):
        raise ImageError(f"channel_names must be a list of names (text), one per channel, not {channel_names!r}.")
    if voxel_size is not None and (isinstance(voxel_size, str) or not isinstance(voxel_size, (Sequence, np.ndarray)) or not all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v) for v in voxel_size)):
        raise ImageError(f"voxel_size must be (z, y, x) or (y, x) finite numbers in µm, not {voxel_size!r}.")
    array = np.asarray(array)
    axes = axes or guess_axes(array.shape)
    data = to_czyx(array, axes)
    validate(data)
    # 8- and 16-bit integer pixels are exact in float32 and stay in their own type (a 5 × 21 × 1080 × 1080
    # uint16 field is 245 MB, not 490 MB); crops are cut in float32 (crops.extract). Everything else: float32.
    keep = data.dtype.kind in "iu" and data.dtype.itemsize <= 2
    data = np.ascontiguousarray(data, dtype=data.dtype if keep else np.float32)
    names = list(channel_names) if channel_names is not None else [f"ch{i}" for i in range(data.shape[0])]
    if len(names) != data.shape[0]:
        raise ImageError(
            f"{len(names)} channel names were given for an image with {data.shape[0]} channels "
            f"(axes '{axes}', shape {tuple(array.shape)}); check the axes or the names."
        )
    voxel = tuple(float(v) for v in voxel_size) if voxel_size is not None else (1.0, 1.0, 1.0)
    if len(voxel) == 2:
        voxel = (1.0, *voxel)
    if len(voxel) != 3 or min(voxel) <= 0:
        raise ImageError(f"Voxel size {voxel_size} must be three positive numbers (z, y, x) in µm.")
    return Image(data, names, voxel, source)


def _tiff_voxel_size(tif) -> tuple[float, float, float] | None:
    """Voxel size from OME or ImageJ metadata, when the file records it."""
    ome = tif.ome_metadata
    if ome:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(ome)
        for el in root.iter():
            if el.tag.endswith("Pixels"):
                attrs = el.attrib
                try:
                    return (
                        float(attrs.get("PhysicalSizeZ", 1.0)),
                        float(attrs["PhysicalSizeY"]),
                        float(attrs["PhysicalSizeX"]),
                    )
                except KeyError:
                    return None
    ij = tif.imagej_metadata or {}
    page = tif.pages[0]
    try:
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
        y = yres[1] / yres[0]
        x = xres[1] / xres[0]
    except (KeyError, ZeroDivisionError):
        return None
    if ij:
        return (float(ij.get("spacing", 1.0)), float(y), float(x))
    return None


def _tiff_channel_names(tif) -> list[str] | None:
    ome = tif.ome_metadata
    if not ome:
        return None
    import xml.etree.ElementTree as ET

    names = [el.attrib.get("Name") for el in ET.fromstring(ome).iter() if el.tag.endswith("}Channel")]
    return names if names and all(names) else None


def read_image(
    path: str | Path,
    axes: str | None = None,
    channel_names: Sequence[str] | None = None,
    voxel_size: Sequence[float] | None = None,
) -> Image:
    """Read a TIFF / OME-TIFF (or ``.npy``) file; axes come from the file unless given.

    Parameters
    ----------
    path : str or Path
        The image file: ``.tif``/``.tiff`` (OME or ImageJ metadata is read when present) or ``.npy``.
    axes : str, optional
        The file's axes, e.g. ``"ZCYX"`` or ``"CYX"`` (letters C, Z, Y, X); default: from the file.
    channel_names : sequence of str, optional
        One name per channel; default: from the file's metadata, else ``ch0``, ``ch1``, …
    voxel_size : sequence of float, optional
        (z, y, x) in µm; default: from the file's metadata, else 1 µm.

    Returns
    -------
    Image
        The image as ``CZYX``, validated (finite values, not all channels constant).

    Raises
    ------
    ImageError
        A missing or unreadable file, axes that do not fit the data, non-finite values.

    Examples
    --------
    >>> import numpy as np, napari_gradcamo as ng
    >>> np.save("field.npy", np.random.default_rng(0).random((2, 4, 16, 16), np.float32))
    >>> image = ng.read_image("field.npy", axes="CZYX", channel_names=["DNA", "ER"])
    >>> image.data.shape, image.channel_names
    ((2, 4, 16, 16), ['DNA', 'ER'])
    """
    import tifffile

    path = _existing_file(path, "Image")
    if path.suffix == ".npy":
        return make_image(_load_npy(path), axes, channel_names, voxel_size, str(path))
    try:
        with _tiff_errors_raise(path), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            _refuse_truncated(tif, path)
            file_axes = series.axes.upper().replace("Q", "")
            if axes is None and set(file_axes) <= set(CANONICAL_AXES) and len(file_axes) == array.ndim:
                axes = file_axes
            voxel_size = voxel_size or _tiff_voxel_size(tif)
            channel_names = channel_names or _tiff_channel_names(tif)
    except (ImageError, MemoryError):
        raise
    except Exception as error:  # tifffile raises TiffFileError, ValueError, IndexError, struct.error … on bad files
        raise ImageError(f"{path.name} is not a readable TIFF ({type(error).__name__}: {error}); the file is "
                         "truncated or not an image. Copy or export it again.") from None
    return make_image(array, axes, channel_names, voxel_size, str(path))


class _RecordErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tiff_errors_raise(path: Path):
    """tifffile logs (and skips) damaged tags and pages, then returns a smaller image: refuse instead."""
    handler = _RecordErrors()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.messages:
        raise ImageError(f"{path.name} is damaged ({handler.messages[0]}); it is truncated or corrupt. "
                         "Copy or export it again.")


def _refuse_truncated(tif, path: Path) -> None:
    size = path.stat().st_size
    for page in tif.pages:
        if any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts)):
            raise ImageError(f"{path.name} is truncated: its pixel data runs past the end of the file "
                             f"({size} bytes). Copy or export it again.")


def _existing_file(path: str | Path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ImageError(f"{what} path must be a file path (str or pathlib.Path), not {type(path).__name__}; "
                         "an array in memory goes to make_image (images) or straight to run_audit (labels).")
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{what} file {path} does not exist.")
    if not path.is_file():
        raise ImageError(f"{what} path {path} is a folder, not a file; give the TIFF or .npy file itself.")
    return path


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # an empty or cut file: EOFError / ValueError; a pickled array: ValueError
        raise ImageError(f"{path.name} is not a readable .npy array ({type(error).__name__}: {error}); it is empty, "
                         "truncated or holds Python objects. Save it again with numpy.save.") from None


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image (TIFF or ``.npy``) as a ``ZYX`` integer array.

    Parameters
    ----------
    path : str or Path
        A ``YX`` or ``ZYX`` image of whole-number cell ids (0 = background), as TIFF or ``.npy``.

    Returns
    -------
    numpy.ndarray
        The labels, ``ZYX`` (a 2D file gets Z = 1).

    Raises
    ------
    ImageError
        An unreadable file, a bool mask, negative or non-whole ids, or more than three dimensions.

    Examples
    --------
    >>> import numpy as np, napari_gradcamo as ng
    >>> masks = np.zeros((16, 16), np.uint16)
    >>> masks[2:6, 2:6], masks[8:12, 8:12] = 1, 2
    >>> np.save("masks.npy", masks)
    >>> labels = ng.read_labels("masks.npy")
    >>> labels.shape, np.unique(labels).tolist()
    ((1, 16, 16), [0, 1, 2])
    """
    import tifffile

    path = _existing_file(path, "Label")
    if path.suffix == ".npy":
        return as_label_volume(_load_npy(path))
    try:
        with _tiff_errors_raise(path), tifffile.TiffFile(path) as tif:
            labels = tif.asarray()
            _refuse_truncated(tif, path)
    except (ImageError, MemoryError):
        raise
    except Exception as error:
        raise ImageError(f"{path.name} is not a readable label TIFF ({type(error).__name__}: {error}); the file is "
                         "truncated or not an image.") from None
    return as_label_volume(labels)


def as_label_volume(labels: np.ndarray) -> np.ndarray:
    """Check a label image (``YX`` or ``ZYX`` integers) and return it as ``ZYX``."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    if labels.ndim != 3:
        raise ImageError(
            f"Labels must be 2D (YX) or 3D (ZYX), got shape {tuple(labels.shape)}; "
            "squeeze channel or time axes first."
        )
    if labels.dtype == bool:
        raise ImageError("Labels are a yes/no mask (bool), not one id per cell: every cell would merge into one. "
                         "Label the cells first (e.g. scipy.ndimage.label(mask)[0]) or segment with cellpose.")
    if not np.issubdtype(labels.dtype, np.integer):
        finite = np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all()
        if finite and np.all(np.mod(labels, 1) == 0) and (labels.size == 0 or np.abs(labels).max() <= MAX_LABEL_ID):
            labels = labels.astype(np.int64)
        else:
            raise ImageError(f"Labels have dtype {labels.dtype} with non-whole values; expected integer label ids.")
    if labels.size == 0:
        raise ImageError(f"The label image is empty (shape {tuple(labels.shape)}).")
    if labels.min() < 0:
        raise ImageError(f"Labels contain negative ids (lowest {int(labels.min())}); label images use 0 for "
                         "background and positive ids for cells. Relabel them (e.g. skimage.segmentation.relabel_sequential).")
    if int(labels.max()) > MAX_LABEL_ID:
        raise ImageError(f"Label id {int(labels.max())} exceeds {MAX_LABEL_ID} (the largest id a table can hold); "
                         "relabel the cells 1..N (e.g. skimage.segmentation.relabel_sequential).")
    return labels


def check_labels_match(image: Image, labels: np.ndarray) -> None:
    """Refuse a label image whose shape differs from the image's spatial shape."""
    if tuple(labels.shape) != image.spatial_shape:
        raise ImageError(
            f"Labels shape {tuple(labels.shape)} differs from the image's ZYX shape {image.spatial_shape}; "
            "segment this image (or resample the labels) so both cover the same voxels."
        )
    if not labels.any():
        raise ImageError(
            "The label image is empty (no cell ids > 0); segment the image first or check the mask file."
        )
