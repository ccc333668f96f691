"""Lazy images: OME-Zarr and TIFF opened as dask arrays, so a crop reads only the chunks under its window.

Reader choice: zarr-python for OME-Zarr and tifffile's Zarr store (``aszarr``) for TIFF — the reference
implementation of the Zarr format and the TIFF library this package already reads with. Both hand out
chunk-addressed arrays without loading them; dask wraps them so napari, the audit and the plate workers all
see the same ``CZYX`` array. bioio would add a plugin layer and xarray on top of the same two readers, and
ome-zarr-py reads NGFF through the same zarr calls; neither adds what the audit needs (a window read).

The array keeps the file's dtype (no float32 copy of the whole field); crops are cast when normalised.
Unlike :func:`napari_gradcamo.io.images.read_image` TIFF pixels are not scanned for NaN or constant channels
(that would read the whole field): a NaN inside a crop shows up as that cell's NaN score. Float OME-Zarr
fields are scanned once, chunk by chunk, when opened (:meth:`napari_gradcamo.io.ome_zarr.ZarrImage.dask`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.io import ome_zarr
from napari_gradcamo.io.images import (
    CANONICAL_AXES,
    Image,
    ImageError,
    _tiff_channel_names,
    _tiff_voxel_size,
    guess_axes,
    read_labels,
)

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")


def is_zarr(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix in ZARR_SUFFIXES or (path.is_dir() and any((path / n).exists() for n in
                                                                  (".zattrs", "zarr.json", ".zgroup")))


def materialize(piece) -> np.ndarray:
    """A window of a lazy array as numpy, computed in the calling thread (never on a distributed client)."""
    if hasattr(piece, "compute"):
        return piece.compute(scheduler="synchronous")
    return np.asarray(piece)


def _to_czyx(array, axes: str):
    """Reorder a dask array with ``axes`` (tczyx letters, any case) to CZYX; a time axis must have size 1."""
    import dask.array as da

    axes = axes.upper()
    if "T" in axes:
        t = axes.index("T")
        if array.shape[t] != 1:
            raise ImageError(f"The image has {array.shape[t]} time points; select one before auditing.")
        array = array[(slice(None),) * t + (0,)]
        axes = axes.replace("T", "")
    if len(axes) != array.ndim or not set(axes) <= set(CANONICAL_AXES) or not {"Y", "X"} <= set(axes):
        raise ImageError(f"Axes '{axes}' do not describe an image of shape {tuple(array.shape)}; give e.g. 'ZCYX'.")
    for missing in "CZ":
        if missing not in axes:
            array = array[None]
            axes = missing + axes
    return da.transpose(array, [axes.index(a) for a in CANONICAL_AXES])


def open_image(path: str | Path, axes: str | None = None, channel_names: Sequence[str] | None = None,
               voxel_size: Sequence[float] | None = None) -> Image:
    """Open an OME-Zarr image, a TIFF / OME-TIFF or a ``.npy`` file as an :class:`Image` over a dask array."""
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise ImageError(f"Image {path} does not exist.")
    names, file_voxel = None, None
    if is_zarr(path):
        group = ome_zarr.open_group(path)
        if "plate" in ome_zarr.ome_attrs(group):
            raise ImageError(f"{path} is an HCS plate; open one field (e.g. {path}/B/02/0) or run 'gradcamo plate'.")
        level0 = ome_zarr.read_multiscale(group, str(path))
        array, file_axes, file_voxel, names = level0.dask(), level0.axes, level0.voxel_size, level0.channel_names
    elif path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile
        import zarr

        with tifffile.TiffFile(path) as tif:
            file_axes = tif.series[0].axes.upper().replace("Q", "")
            file_voxel, names = _tiff_voxel_size(tif), _tiff_channel_names(tif)
        store = tifffile.imread(path, aszarr=True)  # keeps the file open for as long as the array lives
        array = da.from_zarr(zarr.open(store, mode="r"))
    elif path.suffix == ".npy":
        array = da.from_array(np.load(path, mmap_mode="r", allow_pickle=False))
        file_axes = guess_axes(array.shape)
    else:
        raise ImageError(f"{path.name}: lazy reading supports OME-Zarr, TIFF and .npy files.")
    if axes is None and not (set(file_axes.upper()) <= set("T" + CANONICAL_AXES) and len(file_axes) == array.ndim):
        file_axes = guess_axes(array.shape)
    data = _to_czyx(array, axes or file_axes)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ImageError(f"{path.name} has dtype {data.dtype}; expected integer or float pixels.")
    names = list(channel_names) if channel_names is not None else names or [f"ch{i}" for i in range(data.shape[0])]
    if len(names) != data.shape[0]:
        raise ImageError(f"{len(names)} channel names were given for {path.name}, which has {data.shape[0]} channels.")
    voxel = tuple(float(v) for v in (voxel_size or file_voxel or (1.0, 1.0, 1.0)))
    if len(voxel) != 3 or min(voxel) <= 0:
        raise ImageError(f"Voxel size {voxel} must be three positive numbers (z, y, x) in µm.")
    return Image(data, names, voxel, str(path))


def open_labels(image_path: str | Path, masks: str | Path | None = None, name: str | None = None) -> np.ndarray:
    """A field's labels (ZYX, in memory): the ``masks`` file, else the OME-Zarr image's own label image."""
    if masks:
        return ome_zarr.read_label_image(masks, name) if is_zarr(masks) else read_labels(masks)
    if is_zarr(image_path):
        return ome_zarr.read_label_image(image_path, name)
    raise ImageError(f"No masks for {Path(image_path).name}: give a masks file or cellpose settings.")
