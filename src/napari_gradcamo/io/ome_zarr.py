"""OME-Zarr: images, their label images and HCS plates — NGFF 0.5 written, 0.4 and 0.5 read.

Writing follows NGFF 0.5: Zarr v3 groups whose ``zarr.json`` attributes hold the metadata under ``ome``
(with its ``version``), arrays with ``dimension_names`` equal to the axes. Reading accepts 0.4 (Zarr v2,
``.zattrs``, a ``version`` on each object) and 0.5 alike.

Everything read from a file is validated before it is used (types, lengths, versions, sizes against this
machine's memory) and a problem is an :class:`~napari_gradcamo.io.images.ImageError` naming the file, the
field and the fix: a damaged chunk, attributes that are not a JSON object, a label image declaring 21 TiB.
The validation is written here against the spec because ome-zarr-models (a pydantic model of the spec)
needs pydantic ≥ 2.11.5, which bioimageio.spec 0.5.12 (pinned by bioimageio.core 0.11.0) does not support
(see docs/robustness.md, "NGFF validation").

Read with zarr-python directly: each array is opened, never loaded; :meth:`ZarrImage.dask` wraps level 0 in a
dask array so a crop reads only the chunks under its window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_gradcamo.io.images import FLOAT32_MAX, ImageError

NGFF_VERSION = "0.5"
#: NGFF versions read (0.3 lists axes as plain names, 0.4 as objects, 0.5 nests everything under "ome").
READ_VERSIONS = ("0.3", "0.4", "0.5")
LABELS_NAME = "cells"
_SPACE_AXES = ("z", "y", "x")
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ome_attrs(group, where: str = "the group") -> dict:
    """A group's NGFF attributes (0.5 nests them under ``ome``), checked to be a JSON object."""
    try:
        attrs = group.attrs.asdict() if hasattr(group.attrs, "asdict") else dict(group.attrs)
    except (TypeError, ValueError) as error:
        raise ImageError(f"{where}: its attributes are not a JSON object ({error}); the metadata is damaged. "
                         "Write the OME-Zarr again.") from None
    if not isinstance(attrs, dict):
        raise ImageError(f"{where}: its attributes are a JSON {type(attrs).__name__}, not an object; the metadata "
                         "is damaged. Write the OME-Zarr again.")
    if "ome" in attrs:
        if not isinstance(attrs["ome"], dict):
            raise ImageError(f"{where}: its 'ome' attributes are not a JSON object; write the OME-Zarr again.")
        attrs = dict(attrs["ome"])
    version = attrs.get("version")
    if version is not None and str(version) not in READ_VERSIONS:
        raise ImageError(f"{where}: NGFF version {version!r} is not one this version reads "
                         f"({', '.join(READ_VERSIONS)}); convert it (e.g. with ome2024-ngff-challenge or ome-zarr-py).")
    return attrs


def open_group(path: str | Path, mode: str = "r"):
    """A Zarr group (read: v2 or v3; write: v3, for NGFF 0.5); :class:`ImageError` when it cannot be opened."""
    import zarr

    path = Path(path)
    if mode == "r" and not path.exists():
        raise ImageError(f"OME-Zarr {path} does not exist.")
    try:
        return zarr.open_group(str(path), mode=mode, **({"zarr_format": 3} if mode != "r" else {}))
    except Exception as error:  # zarr raises many kinds (JSON, type, key errors) for a damaged group  # noqa: BLE001
        raise ImageError(f"{path} is not a readable Zarr group ({type(error).__name__}: {error}); give an "
                         "OME-Zarr image or plate.") from None


def _child(group, key: str, where: str):
    """``group[key]``: :class:`KeyError` when absent, :class:`ImageError` when present but unreadable."""
    try:
        return group[key]
    except KeyError:
        raise
    except Exception as error:  # noqa: BLE001 - damaged zarr.json / .zarray of the child
        raise ImageError(f"{where}/{key} is unreadable ({type(error).__name__}: {error}); the OME-Zarr is "
                         "damaged. Write it again.") from None


class _CheckedArray:
    """A Zarr array whose chunk reads turn decoding failures into :class:`ImageError` (a damaged chunk in a
    field says which field, instead of a blosc ``RuntimeError`` traceback)."""

    def __init__(self, array, where: str):
        self.array, self.where = array, where
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim
        self.chunks = tuple(array.chunks)

    def __getitem__(self, key):
        try:
            return self.array[key]
        except Exception as error:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, TypeError …
            raise ImageError(f"{self.where}: a chunk cannot be decoded ({type(error).__name__}: {error}); the file "
                             "is damaged. Copy or write the OME-Zarr again.") from None

    def __reduce__(self):
        return (_CheckedArray, (self.array, self.where))


@dataclass
class ZarrImage:
    """Level 0 of a multiscale image, unread: the array, its axes (lower case) and voxel size (z, y, x)."""

    array: object  # zarr.Array
    axes: str
    voxel_size: tuple[float, float, float]
    channel_names: list[str] | None
    where: str = ""

    def dask(self, check_pixels: bool = True):
        """Level 0 as a dask array whose damaged chunks raise :class:`ImageError`. Float pixels are scanned
        chunk by chunk (bounded memory) and NaN/Inf or values beyond float32 refused, as for any image."""
        import dask.array as da
        from dask.base import tokenize

        from napari_gradcamo.io.limits import check_allocation, nbytes

        checked = _CheckedArray(self.array, self.where)
        # the field's label image (in memory, at least one byte per voxel) must fit: a declared shape beyond
        # that is refused here, before a pixel scan over it could run for hours
        spatial = [s for a, s in zip(self.axes, checked.shape) if a in _SPACE_AXES]
        check_allocation(nbytes(spatial, np.uint8), f"{self.where} (shape {checked.shape}): its label image",
                         ImageError, "the metadata declares a shape this machine cannot audit; check the file")
        data = da.from_array(checked, chunks=checked.chunks, asarray=False, fancy=False,
                             name=f"ome-zarr-{tokenize(self.where, checked.shape, str(checked.dtype))}")
        if check_pixels:
            check_pixels_finite(data, self.where)
        return data


def check_pixels_finite(data, where: str) -> None:
    """Refuse a float image holding NaN/Inf or values float32 cannot hold; read chunk by chunk."""
    import dask
    import dask.array as da

    if not np.issubdtype(data.dtype, np.floating):
        return
    finite = da.isfinite(data)
    bad = (~finite).sum()
    peak = da.abs(da.where(finite, data, 0)).max() if data.dtype.itemsize > 4 else da.zeros(())
    bad, peak = dask.compute(bad, peak, scheduler="synchronous")
    if bad:
        raise ImageError(f"{where} holds {int(bad)} NaN/Inf voxels; replace them (e.g. numpy.nan_to_num) or mask "
                         "the acquisition artefact before auditing.")
    if float(peak) > FLOAT32_MAX:
        raise ImageError(f"{where} holds values up to {float(peak):.3g}, beyond float32's range (±{FLOAT32_MAX:.3g}) "
                         "in which the model computes; every score would be NaN. Rescale the image first.")


def read_multiscale(group, where: str) -> ZarrImage:
    """Level 0 of the image in ``group`` (a zarr group holding ``multiscales``), validated."""
    attrs = ome_attrs(group, where)
    scales = attrs.get("multiscales")
    if not isinstance(scales, list) or not scales or not isinstance(scales[0], dict):
        raise ImageError(f"{where} has no NGFF 'multiscales' metadata; write it as an OME-Zarr image.")
    first = scales[0]
    raw_axes = first.get("axes", [])
    if not isinstance(raw_axes, list) or not all(isinstance(a, (dict, str)) for a in raw_axes):
        raise ImageError(f"{where}: 'multiscales' axes must be a list of axis objects, got {raw_axes!r:.80}.")
    axes = [a.get("name", "") if isinstance(a, dict) else a for a in raw_axes]
    if not all(isinstance(a, str) for a in axes):
        raise ImageError(f"{where}: every axis needs a name, got {axes!r:.80}.")
    axes = [a.lower() for a in axes]
    datasets = first.get("datasets")
    if (not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict)
            or not isinstance(datasets[0].get("path"), str) or not datasets[0]["path"]):
        raise ImageError(f"{where}: 'multiscales' lists no dataset path.")
    path = datasets[0]["path"]
    try:
        array = _child(group, path, where)
    except KeyError:
        raise ImageError(f"{where}: dataset '{path}' is missing.") from None
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise ImageError(f"{where}: dataset '{path}' is a group, not an array.")
    if (len(axes) != array.ndim or len(set(axes)) != len(axes) or not set(axes) <= set("tczyx")
            or not {"y", "x"} <= set(axes)):
        raise ImageError(f"{where}: axes {axes} do not describe an array of shape {tuple(array.shape)}.")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageError(f"{where}: dataset '{path}' has dtype {array.dtype}; expected integer or float pixels.")
    _check_chunking(array, f"{where}/{path}")
    return ZarrImage(array, "".join(axes), _voxel_size(datasets[0], axes, where), _channel_names(attrs, array, axes),
                     f"{where}/{path}")


#: Most chunks an array may declare: every reader (dask's graph, a full read of a label image) walks them, so a
#: file declaring 10¹² chunks would hang it. A 5×21×2160×2160 field in 1×1×256×256 chunks has 8,505.
MAX_CHUNKS = 2_000_000


def _check_chunking(array, where: str) -> None:
    """Refuse an array declaring more chunks than :data:`MAX_CHUNKS` or one chunk larger than memory."""
    from napari_gradcamo.io.limits import check_allocation, nbytes

    shape, chunks = tuple(int(s) for s in array.shape), tuple(int(c) for c in array.chunks)
    if len(chunks) != len(shape) or min(chunks, default=1) < 1:
        raise ImageError(f"{where}: chunks {chunks} do not fit shape {shape}; the metadata is damaged.")
    if min(shape, default=0) < 1:
        raise ImageError(f"{where} has shape {shape}: it is empty (a dimension of size 0); give the field's image.")
    per_axis = [-(-s // c) for s, c in zip(shape, chunks)]
    count = math.prod(per_axis)  # each axis is bounded by the product, so dask's per-axis tuples are too
    if count > MAX_CHUNKS:
        raise ImageError(f"{where} (shape {shape}) declares {count:,} chunks of {chunks} (at most {MAX_CHUNKS:,}); "
                         "the metadata is damaged, or rechunk the array into larger chunks.")
    check_allocation(nbytes(chunks, array.dtype), f"{where}: one chunk of {chunks}", ImageError,
                     "rechunk the array into smaller chunks, or check the file")


def _voxel_size(dataset: dict, axes: Sequence[str], where: str = "") -> tuple[float, float, float]:
    scale: list[Any] = [1.0] * len(axes)
    transforms = dataset.get("coordinateTransformations") or []
    if not isinstance(transforms, list):
        raise ImageError(f"{where}: coordinateTransformations must be a list.")
    for transform in transforms:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = transform.get("scale", scale)
    if (not isinstance(scale, list) or len(scale) != len(axes)
            or not all(_is_number(s) and 0 < s < 1e12 for s in scale)):
        raise ImageError(f"{where}: scale {scale!r:.80} does not give one positive size per axis {list(axes)}.")
    return tuple(float(scale[axes.index(a)]) if a in axes else 1.0 for a in _SPACE_AXES)


def _channel_names(attrs: dict, array, axes: Sequence[str]) -> list[str] | None:
    omero = attrs.get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list):
        return None
    names = [str(c.get("label", "")) for c in channels if isinstance(c, dict)]
    n = array.shape[axes.index("c")] if "c" in axes else 1
    return names if len(names) == n and all(names) else None


def _listed_labels(labels_group, where: str) -> list[str]:
    listed = ome_attrs(labels_group, where).get("labels") or []
    if not isinstance(listed, list) or not all(isinstance(n, str) and n for n in listed):
        raise ImageError(f"{where}: 'labels' must list label image names, got {listed!r:.80}.")
    return listed


def has_label_image(image_path: str | Path) -> bool:
    """Whether an OME-Zarr image lists a label image (nothing is read but metadata)."""
    try:
        return bool(_listed_labels(_child(open_group(image_path), "labels", str(image_path)), f"{image_path}/labels"))
    except (ImageError, KeyError):
        return False


def read_label_image(image_path: str | Path, name: str | None = None) -> np.ndarray:
    """The label image ``labels/<name>`` of an OME-Zarr image (the first listed when ``name`` is None), as ZYX.

    Its declared shape is checked against the memory available before it is read, and a damaged chunk is an
    :class:`ImageError`."""
    from napari_gradcamo.io.images import as_label_volume
    from napari_gradcamo.io.limits import check_allocation, nbytes

    image_path = Path(image_path)
    group = open_group(image_path)
    try:
        labels_group = _child(group, "labels", str(image_path))
    except KeyError:
        raise ImageError(f"{image_path} has no 'labels' group; give masks or segment the field with cellpose.") from None
    listed = _listed_labels(labels_group, f"{image_path}/labels")
    name = name or (listed[0] if listed else None)
    try:
        label_group = _child(labels_group, name, f"{image_path}/labels") if name else None
    except KeyError:
        label_group = None
    if label_group is None:
        raise ImageError(f"{image_path}/labels has no label image '{name}' (it lists {listed}).")
    where = f"{image_path}/labels/{name}"
    level0 = read_multiscale(label_group, where)
    if not np.issubdtype(level0.array.dtype, np.integer):
        raise ImageError(f"{where} has dtype {level0.array.dtype}; a label image holds integer cell ids.")
    keep = tuple(0 if a in "tc" else slice(None) for a in level0.axes)
    kept_shape = [s for a, s in zip(level0.axes, level0.array.shape) if a not in "tc"]
    check_allocation(nbytes(kept_shape, level0.array.dtype), f"{where} (shape {tuple(level0.array.shape)})",
                     ImageError, "the metadata declares a shape this machine cannot hold; check the file")
    data = np.asarray(_CheckedArray(level0.array, level0.where)[keep])
    return as_label_volume(data)


def write_image(parent, name: str, czyx: np.ndarray, channel_names: Sequence[str],
                voxel_size: Sequence[float], labels: np.ndarray | None = None, chunks: Sequence[int] | None = None):
    """Write a CZYX image (one level, NGFF 0.5) as ``parent/name`` with omero channel names and an optional
    label image ``labels/cells``."""
    group = parent.create_group(name, overwrite=True)
    multiscales = _write_level(group, czyx, "czyx", voxel_size, chunks)
    group.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": multiscales,
                          "omero": {"channels": [{"label": str(n), "active": True} for n in channel_names]}}
    if labels is not None:
        label_root = group.create_group("labels")
        label_root.attrs["ome"] = {"version": NGFF_VERSION, "labels": [LABELS_NAME]}
        label_group = label_root.create_group(LABELS_NAME)
        multiscales = _write_level(label_group, np.asarray(labels), "zyx", voxel_size, chunks[1:] if chunks else None)
        label_group.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": multiscales,
                                    "image-label": {"source": {"image": "../../"}}}
    return group


def _write_level(group, data: np.ndarray, axes: str, voxel_size: Sequence[float], chunks) -> list[dict]:
    """Write level ``0`` (with ``dimension_names``); returns the ``multiscales`` metadata to store."""
    shape = data.shape
    chunks = tuple(chunks) if chunks else tuple(1 if a == "c" else min(s, 256) for a, s in zip(axes, shape))
    group.create_array("0", shape=shape, chunks=chunks, dtype=data.dtype, overwrite=True,
                       dimension_names=tuple(axes))[...] = data
    scale = [1.0 if a == "c" else float(voxel_size[_SPACE_AXES.index(a)]) for a in axes]
    return [{
        "axes": [{"name": a, "type": "channel"} if a == "c" else {"name": a, "type": "space", "unit": "micrometer"}
                 for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]


@dataclass
class PlateField:
    """One field of an HCS plate: where it lies in the plate and its image group's path."""

    plate: str
    row: str
    column: str
    site: int
    path: Path

    @property
    def well(self) -> str:
        return f"{self.row}{self.column}"


def read_plate(path: str | Path) -> tuple[str, list[PlateField]]:
    """The plate's name and every field listed by its NGFF plate and well metadata, in plate order."""
    path = Path(path)
    root = open_group(path)
    plate = ome_attrs(root, str(path)).get("plate")
    if not isinstance(plate, dict) or not isinstance(plate.get("wells"), list):
        raise ImageError(f"{path} has no NGFF 'plate' metadata with a wells list; is it an HCS plate?")
    name = plate.get("name")
    name = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) and str(name) else path.name.split(".")[0]
    fields = []
    for well in plate["wells"]:
        well_path = well.get("path", "") if isinstance(well, dict) else ""
        parts = well_path.split("/") if isinstance(well_path, str) else []
        if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
            raise ImageError(f"{path}: well path {well_path!r:.40} is not 'row/column'.")
        try:
            well_group = _child(root, well_path, str(path))
        except KeyError:
            raise ImageError(f"{path}: well {well_path} is listed but missing.") from None
        well_meta = ome_attrs(well_group, f"{path}/{well_path}").get("well") or {}
        images = well_meta.get("images") if isinstance(well_meta, dict) else None
        if not isinstance(images, list):
            raise ImageError(f"{path}: well {well_path} has no 'well' metadata listing its images.")
        for site, image in enumerate(images, start=1):
            image_path = image.get("path") if isinstance(image, dict) else None
            if not isinstance(image_path, str) or not image_path or image_path in (".", "..") or "/" in image_path:
                raise ImageError(f"{path}: well {well_path} lists an image without a valid path.")
            fields.append(PlateField(name, parts[0], parts[1], site, path / well_path / image_path))
    if not fields:
        raise ImageError(f"{path}: the plate lists no fields.")
    return name, fields


def write_plate(path: str | Path, name: str, fields: Sequence[dict], chunks: Sequence[int] | None = None) -> Path:
    """Write an HCS plate (NGFF 0.5). Each field dict: ``row``, ``column``, ``image`` (CZYX), ``channel_names``,
    ``voxel_size`` and optionally ``labels`` (ZYX); fields of one well become its sites in the given order."""
    root = open_group(path, mode="w")
    wells: dict[tuple[str, str], list[dict]] = {}
    for f in fields:
        wells.setdefault((str(f["row"]), str(f["column"])), []).append(f)
    rows = sorted({r for r, _ in wells})
    columns = sorted({c for _, c in wells})
    for (row, column), sites in wells.items():
        well = root.require_group(row).require_group(column)
        for i, f in enumerate(sites):
            write_image(well, str(i), np.asarray(f["image"]), f["channel_names"], f["voxel_size"], f.get("labels"), chunks)
        well.attrs["ome"] = {"version": NGFF_VERSION, "well": {"images": [{"path": str(i)} for i in range(len(sites))]}}
    for row in rows:
        root[row].attrs["ome"] = {"version": NGFF_VERSION}  # intermediate groups carry no metadata of their own
    root.attrs["ome"] = {"version": NGFF_VERSION, "plate": {
        "version": NGFF_VERSION, "name": name,  # ome-zarr-models 1.7 warns when the plate itself has none "field_count": max(len(s) for s in wells.values()),
        "rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
        "wells": [{"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": columns.index(c)} for r, c in wells],
    }}
    return Path(path)
