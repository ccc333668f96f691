"""A saved audit as one folder: image, masks, per-cell Grad-CAM maps, the table and the run record.

Layout (format :data:`FORMAT`, version :data:`VERSION`)::

    results.json     what is here: format, version, channel names, voxel size, model, flag rule
    image.tif        the stains, C×Z×Y×X (tifffile)
    masks.tif        the label image, Z×Y×X (uint32)
    gradcamo.parquet the per-cell table (all columns; also gradcamo.csv for people)
    cams.npz         per audited cell: raw map, crop origin, crop shape (no pickles: allow_pickle=False)
    run.json         the run record, when one is given

Written atomically (a temporary folder beside the target, then a rename); an existing folder is only
replaced with ``overwrite=True``. Reading validates every field and raises :class:`ResultsFolderError`
naming the problem. No Qt, no torch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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
    if tuple(results.labels.shape) != tuple(image.shape[1:]):
        raise ResultsFolderError(f"masks {results.labels.shape} do not match the image {image.shape[1:]}.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        tifffile.imwrite(tmp / "image.tif", image, compression="zlib")
        tifffile.imwrite(tmp / "masks.tif", np.asarray(results.labels, dtype=np.uint32), compression="zlib")
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
    from napari_gradcamo.audit.scoring import SCORE_KINDS

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


def _read_cams(path: Path) -> dict:
    from napari_gradcamo.audit.run import CellCam

    if not path.is_file():
        return {}
    cams = {}
    with np.load(path, allow_pickle=False) as data:
        for label in data["labels"].tolist():
            raw, origin, crop = data[f"raw_{label}"], data[f"origin_{label}"], data[f"crop_{label}"]
            if raw.ndim != 3 or origin.shape != (3,) or crop.shape != (3,):
                raise ResultsFolderError(f"{path.name}: the map of cell {label} is malformed.")
            cams[int(label)] = CellCam(int(label), raw, tuple(int(v) for v in origin), tuple(int(v) for v in crop))
    return cams


def read_results_folder(folder) -> ResultsFolder:
    """Read a folder written by :func:`write_results_folder`, checking every field."""
    import tifffile

    folder = Path(folder)
    if not is_results_folder(folder):
        raise ResultsFolderError(f"{folder} is not a results folder (no {MANIFEST}); choose the folder an audit saved.")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsFolderError(f"{folder / MANIFEST} is unreadable: {error}") from error
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ResultsFolderError(f"{folder} holds format {manifest.get('format')!r} version "
                                 f"{manifest.get('version')!r}; this version reads {FORMAT!r} {VERSION}.")
    names, voxel = manifest.get("channel_names"), manifest.get("voxel_size")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ResultsFolderError(f"{MANIFEST}: channel_names must be a list of names.")
    if not isinstance(voxel, list) or len(voxel) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in voxel):
        raise ResultsFolderError(f"{MANIFEST}: voxel_size must be three positive numbers.")
    image = tifffile.imread(folder / "image.tif")
    labels = tifffile.imread(folder / "masks.tif")
    if image.ndim != 4 or image.shape[0] != len(names) or labels.shape != image.shape[1:]:
        raise ResultsFolderError(f"{folder}: image {image.shape}, masks {labels.shape} and "
                                 f"{len(names)} channel names do not fit together.")
    table = pd.read_parquet(folder / "gradcamo.parquet")
    if "label" not in table:
        raise ResultsFolderError(f"{folder / 'gradcamo.parquet'} has no 'label' column.")
    record = None
    if (folder / "run.json").is_file():
        try:
            record = json.loads((folder / "run.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ResultsFolderError(f"{folder / 'run.json'} is unreadable: {error}") from error
        if not isinstance(record, dict):
            raise ResultsFolderError(f"{folder / 'run.json'} must hold one run record (a JSON object).")
    rule = _check_flag_rule(manifest["flag_rule"]) if manifest.get("flag_rule") is not None else None
    return ResultsFolder(image, names, tuple(float(v) for v in voxel), labels.astype(np.uint32), table,
                         _read_cams(folder / "cams.npz"), str(manifest.get("model", "")), record, rule)
