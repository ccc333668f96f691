"""A saved audit as one folder: image, masks, per-cell Grad-CAM maps, the table and the run record.

Layout (format :data:`FORMAT`, version :data:`VERSION`)::

    results.json     what is here: format, version, channel names, voxel size, model, flag rule
    image.tif        the stains, C×Z×Y×X (tifffile)
    masks.tif        the label image, Z×Y×X (its own integer dtype: ids up to 2⁶³−1 survive)
    gradcamo.parquet the per-cell table (all columns; also gradcamo.csv for people)
    cams.npz         per audited cell: raw map, crop origin, crop shape (no pickles: allow_pickle=False)
    run.json         the run record, when one is given

Written atomically (a temporary folder beside the target, then a rename); an existing folder is only
replaced with ``overwrite=True``. Reading validates every field (types, shapes, sizes against the machine's
memory before anything is loaded, label ids, the table's cells against the masks) and raises
:class:`ResultsFolderError` naming the problem and the fix. No Qt, no torch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_gradcamo.io.atomic import temp_folder

FORMAT = "napari-gradcamo results"
VERSION = 1
MANIFEST = "results.json"


class ResultsFolderError(ValueError):
    """A results folder that cannot be written or read; the message names the problem and the fix."""


@dataclass
class ResultsFolder:
    """What a results folder holds, in memory."""

    image: np.ndarray  # C×Z×Y×X
    channel_names: list[str]
    voxel_size: tuple[float, float, float]
    labels: np.ndarray  # Z×Y×X
    table: pd.DataFrame
    cams: dict = field(default_factory=dict)  # label -> napari_gradcamo.audit.run.CellCam
    model: str = ""
    run_record: dict | None = None
    flag_rule: dict | None = None  # {"on": a score column, "threshold": float}: the verdict shown when saved


def is_results_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / MANIFEST).is_file()


def write_results_folder(folder, results: ResultsFolder, overwrite: bool = False) -> Path:
    """Write ``results`` to ``folder`` (atomically); refuses an existing folder unless ``overwrite``."""
    import tifffile

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ResultsFolderError(f"{folder} exists; choose a new folder name or allow overwriting it.")
    image = np.asarray(results.image)
    if image.ndim != 4 or len(results.channel_names) != image.shape[0]:
        raise ResultsFolderError(f"image must be C×Z×Y×X with one name per channel, got {image.shape} "
                                 f"and {len(results.channel_names)} names.")
    labels = _check_labels(np.asarray(results.labels), "the masks")
    if tuple(labels.shape) != tuple(image.shape[1:]):
        raise ResultsFolderError(f"masks {labels.shape} do not match the image {image.shape[1:]}.")
    _check_table(results.table, labels, "the table")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(folder.parent, prefix=f".{folder.name}.")
    try:
        tifffile.imwrite(tmp / "image.tif", image, compression="zlib")
        tifffile.imwrite(tmp / "masks.tif", labels, compression="zlib")  # its own dtype: no id is cut
        results.table.to_parquet(tmp / "gradcamo.parquet", index=False)
        results.table.to_csv(tmp / "gradcamo.csv", index=False)
        _write_cams(tmp / "cams.npz", results.cams)
        if results.run_record is not None:
            (tmp / "run.json").write_text(json.dumps(results.run_record, indent=1, default=str))
        manifest = {"format": FORMAT, "version": VERSION, "channel_names": list(results.channel_names),
                    "voxel_size": [float(v) for v in results.voxel_size], "model": results.model,
                    "cells": int(len(results.table)), "cams": len(results.cams)}
        if results.flag_rule is not None:
            manifest["flag_rule"] = _check_flag_rule(results.flag_rule)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _check_flag_rule(rule) -> dict:
    """``{"on": score column, "threshold": finite float}`` or :class:`ResultsFolderError`."""
    from napari_gradcamo.output.results import SCORE_KINDS

    on, threshold = (rule.get("on"), rule.get("threshold")) if isinstance(rule, dict) else (None, None)
    if on not in SCORE_KINDS or isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not np.isfinite(threshold):
        raise ResultsFolderError(f"{MANIFEST}: flag_rule must be {{'on': one of {sorted(SCORE_KINDS)}, "
                                 f"'threshold': a number}}, got {rule!r}.")
    return {"on": str(on), "threshold": float(threshold)}


def _write_cams(path: Path, cams: dict) -> None:
    labels = sorted(int(k) for k in cams)
    arrays = {"labels": np.asarray(labels, dtype=np.int64)}
    for label in labels:
        cam = cams[label]
        arrays[f"raw_{label}"] = np.asarray(cam.raw, dtype=np.float32)
        arrays[f"origin_{label}"] = np.asarray(cam.origin, dtype=np.int64)
        arrays[f"crop_{label}"] = np.asarray(cam.crop_shape, dtype=np.int64)
    np.savez_compressed(path, **arrays)


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """``labels`` if they are integer ids 0…2⁶³−1; a :class:`ResultsFolderError` otherwise (never cast)."""
    from napari_gradcamo.io.images import MAX_LABEL_ID

    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ResultsFolderError(f"{what} hold {labels.dtype} values, not integer cell ids; masks are written as "
                                 "integers, so this file was changed. Save the audit again from the original masks.")
    if labels.size and int(labels.min()) < 0:
        raise ResultsFolderError(f"{what} hold negative ids (lowest {int(labels.min())}); cell ids are 0 "
                                 "(background) and positive. Save the audit again from the original masks.")
    if labels.size and int(labels.max()) > MAX_LABEL_ID:
        raise ResultsFolderError(f"{what} hold id {int(labels.max())}, above {MAX_LABEL_ID} (the largest a table "
                                 "holds); relabel the cells 1..N (skimage.segmentation.relabel_sequential).")
    return labels


def _check_table(table, labels: np.ndarray, what: str) -> None:
    """The table's ``label`` column: whole numbers, each a cell of ``labels``."""
    if not isinstance(table, pd.DataFrame) or "label" not in table:
        raise ResultsFolderError(f"{what} has no 'label' column; it must be the audit's per-cell table.")
    column = table["label"]
    if len(column) == 0:
        return
    if not pd.api.types.is_integer_dtype(column) or column.isna().any():
        raise ResultsFolderError(f"{what}: its 'label' column holds {column.dtype} values, not whole cell ids.")
    values = column.to_numpy(dtype=getattr(column.dtype, "numpy_dtype", None))  # nullable Int64 -> int64
    listed = np.unique(values)
    present = np.isin(listed, labels, assume_unique=False)
    if not present.all():
        missing = listed[~present]
        shown = ", ".join(str(int(v)) for v in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ResultsFolderError(f"{what} lists {len(missing)} cell(s) the masks do not hold ({shown}); the table "
                                 "and masks do not belong together (masks edited after the audit?). Audit the "
                                 "edited masks again, or remove those rows.")


def _read_tiff(path: Path, what: str) -> np.ndarray:
    """A TIFF read after its declared shape was checked against the memory available."""
    import tifffile

    from napari_gradcamo.io.limits import check_allocation, nbytes

    if not path.is_file():
        raise ResultsFolderError(f"{path} is missing; the results folder is incomplete. Save the audit again.")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_allocation(nbytes(series.shape, series.dtype), f"{path.name} (shape {tuple(series.shape)})",
                             ResultsFolderError, "the file was changed or damaged; save the audit again")
            data = series.asarray()
    except ResultsFolderError:
        raise
    except Exception as error:  # tifffile raises many kinds for a damaged file  # noqa: BLE001
        raise ResultsFolderError(f"{path.name} ({what}) is unreadable: {type(error).__name__}: {error}. The file "
                                 "is damaged; save the audit again.") from None
    if data.dtype.kind not in "biuf":
        raise ResultsFolderError(f"{path.name} ({what}) holds {data.dtype} values; expected numbers.")
    return data


def _npz_member(data, name: str, path: Path):
    """One array of an npz, its header checked (shape, dtype, size) before it is read."""
    from napari_gradcamo.io.limits import check_allocation, nbytes

    member = f"{name}.npy"
    if member not in data.zip.namelist():
        raise ResultsFolderError(f"{path.name} has no '{name}' entry; the file is incomplete or was changed. "
                                 "Save the audit again.")
    with data.zip.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise ResultsFolderError(f"{path.name}: '{name}' is in .npy format {version}; save the audit again.")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ResultsFolderError(f"{path.name}: '{name}' holds {dtype} values; expected numbers.")
    check_allocation(nbytes(shape, dtype), f"{path.name}: '{name}' (shape {shape})", ResultsFolderError,
                     "the file was changed or damaged; save the audit again")
    return data[name]


def _read_cams(path: Path, labels: np.ndarray | None = None) -> dict:
    import zipfile
    import zlib

    from napari_gradcamo.crops.maps import CellCam

    if not path.is_file():
        return {}
    cams = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "zip"):
                raise ResultsFolderError(f"{path.name} is not an .npz archive of maps; save the audit again.")
            ids = _npz_member(data, "labels", path)
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise ResultsFolderError(f"{path.name}: 'labels' must be a list of cell ids, got {ids.dtype} "
                                         f"{ids.shape}.")
            if labels is not None and ids.size and not np.isin(ids, labels).all():
                raise ResultsFolderError(f"{path.name} holds maps of cells the masks do not hold; the maps and "
                                         "masks do not belong together. Save the audit again.")
            for label in ids.tolist():
                raw = _npz_member(data, f"raw_{label}", path)
                origin = _npz_member(data, f"origin_{label}", path)
                crop = _npz_member(data, f"crop_{label}", path)
                if (raw.ndim != 3 or origin.shape != (3,) or crop.shape != (3,) or raw.dtype.kind != "f"
                        or origin.dtype.kind not in "iu" or crop.dtype.kind not in "iu"):
                    raise ResultsFolderError(f"{path.name}: the map of cell {label} is malformed.")
                cams[int(label)] = CellCam(int(label), raw, tuple(int(v) for v in origin),
                                           tuple(int(v) for v in crop))
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as error:
        if isinstance(error, ResultsFolderError):
            raise
        raise ResultsFolderError(f"{path.name} is unreadable ({type(error).__name__}: {error}); the file is "
                                 "damaged. Save the audit again.") from None
    return cams


def read_results_folder(folder) -> ResultsFolder:
    """Read a folder written by :func:`write_results_folder`, checking every field."""
    from napari_gradcamo.io.limits import loads_json

    folder = Path(folder)
    if not is_results_folder(folder):
        raise ResultsFolderError(f"{folder} is not a results folder (no {MANIFEST}); choose the folder an audit saved.")
    try:
        text = (folder / MANIFEST).read_bytes()[:1_000_000]
    except OSError as error:
        raise ResultsFolderError(f"{folder / MANIFEST} is unreadable: {error}") from error
    manifest = loads_json(text, str(folder / MANIFEST), ResultsFolderError)
    if not isinstance(manifest, dict):
        raise ResultsFolderError(f"{folder / MANIFEST} holds a JSON {type(manifest).__name__}, not the object an "
                                 "audit writes; choose the folder an audit saved.")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ResultsFolderError(f"{folder} holds format {manifest.get('format')!r} version "
                                 f"{manifest.get('version')!r}; this version reads {FORMAT!r} {VERSION}.")
    names, voxel = manifest.get("channel_names"), manifest.get("voxel_size")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ResultsFolderError(f"{MANIFEST}: channel_names must be a list of names.")
    if (not isinstance(voxel, list) or len(voxel) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6 for v in voxel)):
        raise ResultsFolderError(f"{MANIFEST}: voxel_size must be three positive numbers (µm, below 10⁶).")
    image = _read_tiff(folder / "image.tif", "the image")
    labels = _check_labels(_read_tiff(folder / "masks.tif", "the masks"), "masks.tif")
    if image.ndim != 4 or image.shape[0] != len(names) or labels.shape != image.shape[1:]:
        raise ResultsFolderError(f"{folder}: image {image.shape}, masks {labels.shape} and "
                                 f"{len(names)} channel names do not fit together.")
    try:
        table = pd.read_parquet(folder / "gradcamo.parquet")
    except Exception as error:  # pyarrow raises its own kinds for a damaged file  # noqa: BLE001
        raise ResultsFolderError(f"{folder / 'gradcamo.parquet'} is unreadable ({type(error).__name__}: {error}); "
                                 "the file is damaged or missing. Save the audit again.") from None
    _check_table(table, labels, str(folder / "gradcamo.parquet"))
    record = None
    if (folder / "run.json").is_file():
        try:
            text = (folder / "run.json").read_bytes()[:50_000_000]
        except OSError as error:
            raise ResultsFolderError(f"{folder / 'run.json'} is unreadable: {error}") from error
        record = loads_json(text, str(folder / "run.json"), ResultsFolderError)
        if not isinstance(record, dict):
            raise ResultsFolderError(f"{folder / 'run.json'} must hold one run record (a JSON object).")
    return ResultsFolder(image, names, tuple(float(v) for v in voxel), labels, table,
                         _read_cams(folder / "cams.npz", labels), str(manifest.get("model", "")), record,
                         _check_flag_rule(manifest["flag_rule"]) if manifest.get("flag_rule") is not None else None)
