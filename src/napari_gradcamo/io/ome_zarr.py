"""OME-Zarr (NGFF 0.4 written, 0.4 and 0.5 read): images, their label images and HCS plates.

Read with zarr-python directly: each array is opened, never loaded; :func:`napari_gradcamo.io.lazy.open_image`
wraps level 0 in a dask array so a crop reads only the chunks under its window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.io.images import ImageError

NGFF_VERSION = "0.4"
LABELS_NAME = "cells"
_SPACE_AXES = ("z", "y", "x")


def ome_attrs(group) -> dict:
    """A group's NGFF attributes (0.5 nests them under ``ome``)."""
    attrs = dict(group.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def open_group(path: str | Path, mode: str = "r"):
    import zarr

    path = Path(path)
    if mode == "r" and not path.exists():
        raise ImageError(f"OME-Zarr {path} does not exist.")
    try:
        return zarr.open_group(str(path), mode=mode, **({"zarr_format": 2} if mode != "r" else {}))
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ImageError(f"{path} is not a readable Zarr group ({error}); give an OME-Zarr image or plate.") from error


@dataclass
class ZarrImage:
    """Level 0 of a multiscale image, unread: the array, its axes (lower case) and voxel size (z, y, x)."""

    array: object  # zarr.Array
    axes: str
    voxel_size: tuple[float, float, float]
    channel_names: list[str] | None


def read_multiscale(group, where: str) -> ZarrImage:
    """Level 0 of the image in ``group`` (a zarr group holding ``multiscales``), validated."""
    attrs = ome_attrs(group)
    scales = attrs.get("multiscales")
    if not isinstance(scales, list) or not scales or not isinstance(scales[0], dict):
        raise ImageError(f"{where} has no NGFF 'multiscales' metadata; write it as an OME-Zarr image.")
    first = scales[0]
    axes = [a.get("name", "") if isinstance(a, dict) else str(a) for a in first.get("axes", [])]
    datasets = first.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise ImageError(f"{where}: 'multiscales' lists no dataset path.")
    try:
        array = group[str(datasets[0]["path"])]
    except KeyError:
        raise ImageError(f"{where}: dataset '{datasets[0]['path']}' is missing.") from None
    if len(axes) != array.ndim or not set(axes) <= set("tczyx") or not {"y", "x"} <= set(axes):
        raise ImageError(f"{where}: axes {axes} do not describe an array of shape {array.shape}.")
    return ZarrImage(array, "".join(axes), _voxel_size(datasets[0], axes), _channel_names(attrs, array, axes))


def _voxel_size(dataset: dict, axes: Sequence[str]) -> tuple[float, float, float]:
    scale = [1.0] * len(axes)
    for transform in dataset.get("coordinateTransformations") or []:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = [float(s) for s in transform.get("scale", scale)]
    if len(scale) != len(axes) or min(scale) <= 0:
        raise ImageError(f"Scale {scale} does not give one positive size per axis {list(axes)}.")
    return tuple(scale[axes.index(a)] if a in axes else 1.0 for a in _SPACE_AXES)


def _channel_names(attrs: dict, array, axes: Sequence[str]) -> list[str] | None:
    channels = (attrs.get("omero") or {}).get("channels") or []
    names = [str(c.get("label", "")) for c in channels if isinstance(c, dict)]
    n = array.shape[axes.index("c")] if "c" in axes else 1
    return names if len(names) == n and all(names) else None


def has_label_image(image_path: str | Path) -> bool:
    """Whether an OME-Zarr image lists a label image (nothing is read but metadata)."""
    try:
        return bool(ome_attrs(open_group(image_path)["labels"]).get("labels"))
    except (ImageError, KeyError):
        return False


def read_label_image(image_path: str | Path, name: str | None = None) -> np.ndarray:
    """The label image ``labels/<name>`` of an OME-Zarr image (the first listed when ``name`` is None), as ZYX."""
    from napari_gradcamo.io.images import as_label_volume

    image_path = Path(image_path)
    group = open_group(image_path)
    try:
        labels_group = group["labels"]
    except KeyError:
        raise ImageError(f"{image_path} has no 'labels' group; give masks or segment the field with cellpose.") from None
    listed = ome_attrs(labels_group).get("labels") or []
    name = name or (listed[0] if listed else None)
    if name is None or name not in labels_group:
        raise ImageError(f"{image_path}/labels has no label image '{name}' (it lists {listed}).")
    level0 = read_multiscale(labels_group[name], f"{image_path}/labels/{name}")
    data = np.asarray(level0.array[...])
    keep = tuple(0 if a in "tc" else slice(None) for a in level0.axes)
    return as_label_volume(data[keep])


def write_image(parent, name: str, czyx: np.ndarray, channel_names: Sequence[str],
                voxel_size: Sequence[float], labels: np.ndarray | None = None, chunks: Sequence[int] | None = None):
    """Write a CZYX image (one level) as ``parent/name`` with omero channel names and an optional label image."""
    group = parent.create_group(name, overwrite=True)
    _write_level(group, czyx, "czyx", voxel_size, chunks)
    group.attrs["omero"] = {"channels": [{"label": str(n), "active": True} for n in channel_names]}
    if labels is not None:
        label_root = group.create_group("labels")
        label_root.attrs["labels"] = [LABELS_NAME]
        label_group = label_root.create_group(LABELS_NAME)
        _write_level(label_group, np.asarray(labels), "zyx", voxel_size, chunks[1:] if chunks else None)
        label_group.attrs["image-label"] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    return group


def _write_level(group, data: np.ndarray, axes: str, voxel_size: Sequence[float], chunks) -> None:
    shape = data.shape
    chunks = tuple(chunks) if chunks else tuple(1 if a == "c" else min(s, 256) for a, s in zip(axes, shape))
    group.create_array("0", shape=shape, chunks=chunks, dtype=data.dtype, overwrite=True)[...] = data
    scale = [1.0 if a == "c" else float(voxel_size[_SPACE_AXES.index(a)]) for a in axes]
    group.attrs["multiscales"] = [{
        "version": NGFF_VERSION,
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
    plate = ome_attrs(root).get("plate")
    if not isinstance(plate, dict) or not isinstance(plate.get("wells"), list):
        raise ImageError(f"{path} has no NGFF 'plate' metadata with a wells list; is it an HCS plate?")
    name = str(plate.get("name") or path.name.split(".")[0])
    fields = []
    for well in plate["wells"]:
        well_path = str(well.get("path", "")) if isinstance(well, dict) else ""
        parts = well_path.split("/")
        if len(parts) != 2 or not all(parts):
            raise ImageError(f"{path}: well path '{well_path}' is not 'row/column'.")
        try:
            images = (ome_attrs(root[well_path]).get("well") or {}).get("images") or []
        except KeyError:
            raise ImageError(f"{path}: well {well_path} is listed but missing.") from None
        for site, image in enumerate(images, start=1):
            if not isinstance(image, dict) or "path" not in image:
                raise ImageError(f"{path}: well {well_path} lists an image without a path.")
            fields.append(PlateField(name, parts[0], parts[1], site, path / well_path / str(image["path"])))
    if not fields:
        raise ImageError(f"{path}: the plate lists no fields.")
    return name, fields


def write_plate(path: str | Path, name: str, fields: Sequence[dict], chunks: Sequence[int] | None = None) -> Path:
    """Write an HCS plate. Each field dict: ``row``, ``column``, ``image`` (CZYX), ``channel_names``,
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
        well.attrs["well"] = {"version": NGFF_VERSION, "images": [{"path": str(i)} for i in range(len(sites))]}
    root.attrs["plate"] = {
        "version": NGFF_VERSION, "name": name, "field_count": max(len(s) for s in wells.values()),
        "rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
        "wells": [{"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": columns.index(c)} for r, c in wells],
    }
    return Path(path)
