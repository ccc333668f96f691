"""Paired 2D data on disk: a CSV manifest of TIFF files (brightfield, stains, labels, class).

Columns: ``brightfield`` (``(P, Y, X)`` or ``(Y, X)`` TIFF), ``stains`` (``(C, Y, X)`` TIFF), ``class`` (a
name), optional ``labels`` (``(Y, X)`` cell labels, needed by ``evaluate``).  Relative paths are read
from the manifest's folder.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.io.atomic import temp_file
from napari_gradcamo.virtual_stain.data import PairedImage, synthetic_pairs
from napari_gradcamo.virtual_stain.model import VirtualStainError

REQUIRED = ("brightfield", "stains", "class")


def read_tiff(path: Path, ndims: Sequence[int], what: str) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise VirtualStainError(f"{what} file {path} does not exist; fix the path in the manifest.")
    try:
        data = np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as error:  # tifffile raises several types for a bad file
        raise VirtualStainError(f"{what} file {path} is not a readable TIFF ({error}).") from error
    if data.ndim not in ndims or not np.isfinite(data).all():
        raise VirtualStainError(f"{what} file {path} has shape {data.shape}; expected {ndims} finite dimensions.")
    return data


def read_pairs(manifest: str | Path, class_names: Sequence[str] | None = None) -> tuple[list[PairedImage], list[str]]:
    """Read a manifest; classes are indexed in ``class_names`` order (default: sorted names)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise VirtualStainError(f"manifest {manifest} does not exist.")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise VirtualStainError(f"manifest {manifest} has no rows.")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise VirtualStainError(f"manifest {manifest} lacks the column(s) {missing}; it needs {list(REQUIRED)}.")
    names = list(class_names) if class_names else sorted({r["class"] for r in rows})
    unknown = sorted({r["class"] for r in rows} - set(names))
    if unknown:
        raise VirtualStainError(f"classes {unknown} are not among the model's classes {names}.")
    pairs = []
    for i, row in enumerate(rows):
        base = manifest.parent
        bf = read_tiff(base / row["brightfield"], (2, 3), "brightfield")
        stains = read_tiff(base / row["stains"], (3,), "stains")
        bf = bf[None] if bf.ndim == 2 else bf
        if row.get("labels"):
            labels = read_tiff(base / row["labels"], (2,), "labels").astype(np.uint32)
        else:
            labels = np.zeros(stains.shape[1:], np.uint32)
        if bf.shape[1:] != stains.shape[1:] or labels.shape != stains.shape[1:]:
            raise VirtualStainError(f"row {i + 1}: brightfield {bf.shape}, stains {stains.shape} and labels "
                                    f"{labels.shape} must share their (Y, X) size.")
        pairs.append(PairedImage(bf, stains, labels, np.zeros_like(labels), names.index(row["class"]), f"row{i + 1}"))
    return pairs, names


def write_synthetic_pairs(out: str | Path, *, seed: int, n_fields: int, n_classes: int, size: int = 96,
                          first_well: int = 0) -> Path:
    """Write synthetic paired fields as TIFFs + ``manifest.csv`` (refuses a folder that already has one)."""
    import tifffile

    out = Path(out)
    manifest = out / "manifest.csv"
    if manifest.exists():
        raise VirtualStainError(f"{manifest} exists; write to an empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in synthetic_pairs(seed, n_fields, n_classes, size=size, first_well=first_well):
        files = {k: f"{p.name}_{k}.tif" for k in ("brightfield", "stains", "labels")}
        tifffile.imwrite(out / files["brightfield"], p.brightfield, photometric="minisblack")
        tifffile.imwrite(out / files["stains"], p.stains, photometric="minisblack")
        tifffile.imwrite(out / files["labels"], p.labels)
        rows.append({**files, "class": f"class{p.treatment}"})
    write_atomic(manifest, _csv_text(rows))
    return manifest


def _csv_text(rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else list(REQUIRED))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, data) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, default=float))
