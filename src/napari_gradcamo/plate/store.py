"""A plate run's output folder: one result per field written atomically, fingerprints for resuming, and the
plate table assembled from them.

Layout of ``OUT``::

    run.json                                 checkpoint, settings, source and the run fingerprint
    fields/<plate>/<well>/s<site>.parquet    the field's cells (schema of output/results.py + field columns);
                                             its Parquet metadata holds the field fingerprint and the
                                             SHA-256 of the maps file, so a changed or damaged maps file
                                             makes the field be audited again on rerun
    fields/<plate>/<well>/s<site>.maps.npz   raw Grad-CAM maps: labels, origins (z, y, x), maps
    fields/<plate>/<well>/s<site>.failed.json  why a field failed (removed when it succeeds later)
    plate.parquet/plate=<p>/well=<w>/...     the plate table, partitioned by plate and well
    plate.h5ad                               the same table as AnnData (when anndata is installed): every score
                                             and measurement in X, identity/flags/text in obs (anndata_parts)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.io.images import ImageError
from napari_gradcamo.plate.sources import FieldTask

META_KEY = b"napari_gradcamo"
RUN_FILE = "run.json"
PLATE_TABLE = "plate.parquet"
PLATE_ANNDATA = "plate.h5ad"
#: Settings that do not change a result (up to float rounding) and so do not invalidate finished fields.
NOT_IN_FINGERPRINT = ("device", "batch_size")
#: AnnData's ``X`` (float32, one column per name, in this order, then one ``prob_<class>`` per class): every
#: per-cell score and measurement. Nothing numeric about a cell's attention is left in ``obs``.
X_COLUMNS = ("gradcamo", "chance", "lift", "normalised", "neighbour_share", "background_share", "outside_share",
             "drop_cell_occluded", "drop_context_occluded", "probability", "padded_fraction", "volume_voxels")
#: ``var["kind"]`` of each ``X`` column.
X_KINDS = {"gradcamo": "score", "chance": "score", "lift": "score", "normalised": "score",
           "neighbour_share": "share", "background_share": "share", "outside_share": "share",
           "drop_cell_occluded": "occlusion", "drop_context_occluded": "occlusion", "probability": "probability",
           "padded_fraction": "geometry", "volume_voxels": "geometry"}
#: AnnData's ``obsm["centroid_zyx"]`` (voxels).
CENTROID = ("centroid_z", "centroid_y", "centroid_x")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def run_fingerprint(checkpoint_digest: str, settings, segmentation=None) -> str:
    """Hash of the checkpoint's bytes and every setting that changes a result."""
    audit = {k: v for k, v in asdict(settings).items() if k not in NOT_IN_FINGERPRINT}
    return settings_hash([checkpoint_digest, audit, asdict(segmentation) if segmentation is not None else None])


def _stamp(path: str) -> list:
    if not path:
        return []
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def field_fingerprint(run: str, task: FieldTask) -> str:
    """The run fingerprint plus the field's identity and its input files' size and modification time."""
    return settings_hash([run, asdict(task), _stamp(task.image), _stamp(task.masks)])


def field_stem(out: Path, task: FieldTask) -> Path:
    return Path(out) / "fields" / safe_name(task.plate) / safe_name(task.well) / f"s{int(task.site)}"


def safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
    return cleaned.strip(".") or "_"


def atomic_write(path: Path, write) -> Path:
    """Call ``write(temp_path)`` for a temporary file in ``path``'s folder, then rename it onto ``path``."""
    from napari_gradcamo.io.atomic import temp_file

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = str(temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(Path(temp))
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return path


def write_field(out: Path, task: FieldTask, fingerprint: str, run: str, table: pd.DataFrame, cams: Sequence) -> Path:
    """Write a finished field: maps first, then the table (whose presence marks the field done)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stem = field_stem(out, task)
    maps_digest = None
    if cams:
        arrays = {"labels": np.array([c.label for c in cams], np.int64),
                  "origins": np.array([c.origin for c in cams], np.int64),
                  "maps": np.stack([c.raw for c in cams]).astype(np.float32),
                  "crop_shape": np.array(cams[0].crop_shape, np.int64)}
        maps = atomic_write(stem.with_suffix(".maps.npz"), lambda p: _save_npz(p, arrays))
        maps_digest = file_digest(maps)
    else:
        stem.with_suffix(".maps.npz").unlink(missing_ok=True)  # no stale maps of an earlier run beside the table
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**(arrow.schema.metadata or {}), META_KEY: json.dumps({"fingerprint": fingerprint, "run": run,
                                                                    "maps_sha256": maps_digest, **task.metadata()})}
    atomic_write(stem.with_suffix(".parquet"), lambda p: pq.write_table(arrow.replace_schema_metadata(meta), p))
    stem.with_suffix(".failed.json").unlink(missing_ok=True)
    return stem.with_suffix(".parquet")


def _save_npz(path: Path, arrays: dict) -> None:
    import io

    buffer = io.BytesIO()  # built in memory: a full disk fails the plain write below, not numpy's zip writer
    np.savez(buffer, **arrays)  # (whose half-closed ZipFile printed "Exception ignored … Traceback")
    with open(path, "wb") as handle:
        handle.write(buffer.getbuffer())


def write_failure(out: Path, task: FieldTask, fingerprint: str, run: str, reason: str) -> Path:
    record = {"fingerprint": fingerprint, "run": run, "reason": reason, **task.metadata(), "image": task.image}
    return atomic_write(field_stem(out, task).with_suffix(".failed.json"),
                        lambda p: p.write_text(json.dumps(record, indent=1)))


def finished_fingerprint(out: Path, task: FieldTask) -> str | None:
    """The fingerprint a finished field was written with; None when it is not finished, its table is
    unreadable, or its maps file is not the one written with it (missing, changed or damaged), so that the
    field is audited again rather than skipped."""
    import pyarrow.parquet as pq

    path = field_stem(out, task).with_suffix(".parquet")
    if not path.exists():
        return None
    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - a truncated or overwritten table fails here
        meta = json.loads((pq.read_schema(path).metadata or {})[META_KEY])
        fingerprint, maps_digest = meta["fingerprint"], meta["maps_sha256"]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    maps = path.with_name(path.name.replace(".parquet", ".maps.npz"))
    if maps_digest is None:
        return fingerprint if not maps.exists() else None
    try:
        return fingerprint if file_digest(maps) == maps_digest else None
    except OSError:
        return None


def read_field_maps(out: Path, task: FieldTask) -> dict:
    """``{label: CellCam}`` of a finished field (empty when it has no maps)."""
    from napari_gradcamo.audit.run import CellCam

    path = field_stem(out, task).with_suffix(".maps.npz")
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = tuple(int(s) for s in data["crop_shape"])
            labels, origins, maps = data["labels"], data["origins"], data["maps"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ImageError(f"{path} is unreadable ({type(error).__name__}: {error}); run 'gradcamo plate run' on "
                         "the same --out again: the field is audited again.") from None
    if (len(shape) != 3 or labels.ndim != 1 or origins.shape != (len(labels), 3) or maps.ndim != 4
            or len(maps) != len(labels)):
        raise ImageError(f"{path} holds malformed maps; run 'gradcamo plate run' on the same --out again.")
    return {int(lab): CellCam(int(lab), raw, tuple(int(o) for o in origin), shape)
            for lab, origin, raw in zip(labels, origins, maps)}


def write_run(out: Path, record: dict) -> Path:
    return atomic_write(Path(out) / RUN_FILE, lambda p: p.write_text(json.dumps(record, indent=1, default=str)))


def read_run(out: Path) -> dict:
    path = Path(out) / RUN_FILE
    if not path.exists():
        raise ImageError(f"{out} holds no {RUN_FILE}; give the --out folder of a 'gradcamo plate run'.")
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise ImageError(f"{path} is not valid JSON ({error}); rerun 'gradcamo plate run'.") from error
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
        raise ImageError(f"{path} lacks a run fingerprint; rerun 'gradcamo plate run'.")
    return record


def with_normalised(table: pd.DataFrame) -> pd.DataFrame:
    """Add the chance-corrected score (gradcamo − chance) / (1 − chance) when the table lacks it."""
    if "normalised" in table.columns or table.empty:
        return table
    chance = table["chance"].astype(float)
    return table.assign(normalised=(table["gradcamo"].astype(float) - chance) / (1.0 - chance).where(chance < 1))


def collect(out: Path, run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells of every field finished in the run with fingerprint ``run``, and the failures recorded in it."""
    import pyarrow.parquet as pq

    tables, failures = [], []
    for path in sorted((Path(out) / "fields").rglob("*.parquet")):
        meta = json.loads((pq.read_schema(path).metadata or {}).get(META_KEY, b"{}"))
        if meta.get("run") == run:
            tables.append(pd.read_parquet(path))
    for path in sorted((Path(out) / "fields").rglob("*.failed.json")):
        record = json.loads(path.read_text())
        if record.get("run") == run:
            failures.append({k: record.get(k, "") for k in ("field", "plate", "well", "site", "image", "reason")})
    table = pd.concat([t for t in tables if not t.empty], ignore_index=True) if tables else pd.DataFrame()
    return with_normalised(table), pd.DataFrame(failures, columns=["field", "plate", "well", "site", "image", "reason"])


def write_plate_table(out: Path, table: pd.DataFrame, record: dict | None = None) -> dict[str, str]:
    """The plate table as Parquet partitioned by plate/well (replaced as a whole) and, if anndata is
    installed, as ``plate.h5ad`` (:func:`anndata_parts`; ``record``: the run's provenance, kept in its ``uns``);
    returns what was written (or why not)."""
    out = Path(out)
    written = {}
    if table.empty:
        return {"parquet": "no cells: nothing written"}
    from napari_gradcamo.io.atomic import temp_folder

    temp = temp_folder(out, prefix=".plate.")
    try:
        table.to_parquet(temp / "t", partition_cols=["plate", "well"], index=False)
        target = out / PLATE_TABLE
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp / "t", target)
        written["parquet"] = str(target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    written["anndata"] = _write_anndata(out / PLATE_ANNDATA, table, record)
    return written


def anndata_parts(table: pd.DataFrame, record: dict | None = None) -> dict:
    """The plate table split the AnnData way (see :data:`X_COLUMNS`): ``X`` (cells × scores, float32), ``var``
    (score names with their ``kind``), ``obs`` (the cell's identity, flags and text columns, indexed
    ``<field>/<label>``), ``obsm`` (``centroid_zyx``) and ``uns`` (the run record as JSON and the column meanings).

    Text is held as plain Python strings (object dtype), which anndata writes in its classic ``string-array``
    encoding: every anndata version (and R's / Julia's readers) can read it, and pandas 3's string dtype needs no
    opt-in (anndata refuses to write it unless ``allow_write_nullable_strings`` is set)."""
    from napari_gradcamo.output import results

    columns = [c for c in X_COLUMNS if c in table.columns]
    columns += sorted(c for c in table.columns if c.startswith(results.PROBABILITY_PREFIX))
    centroid = [c for c in CENTROID if c in table.columns]
    obs = table.drop(columns=columns + centroid).reset_index(drop=True)
    for column in ("plate", "well", "field", "treatment", "dose"):
        if column in obs:
            obs[column] = obs[column].astype(str)
    for column in obs.columns:
        if not (pd.api.types.is_numeric_dtype(obs[column]) or pd.api.types.is_bool_dtype(obs[column])):
            obs[column] = pd.Series([str(v) for v in obs[column]], index=obs.index, dtype=object)
    names = ([f"{f}/{int(lab)}" for f, lab in zip(obs["field"], obs["label"])] if {"field", "label"} <= set(obs)
             else [str(i) for i in range(len(obs))])
    obs.index = pd.Index(names, dtype=object)
    names = pd.Index(columns, dtype=object)
    var = pd.DataFrame({"kind": pd.Series([X_KINDS.get(c, "probability") for c in columns], index=names, dtype=object)},
                       index=names)
    meanings = {c: results.SCHEMA.get(c, "probability of this class") for c in list(table.columns)}
    uns = {"napari_gradcamo": {"run": json.dumps(record or {}, default=str), "columns": json.dumps(meanings)}}
    obsm = {"centroid_zyx": table[centroid].to_numpy(np.float64)} if len(centroid) == 3 else {}
    return {"X": table[columns].to_numpy(np.float32), "obs": obs, "var": var, "obsm": obsm, "uns": uns}


def _write_anndata(path: Path, table: pd.DataFrame, record: dict | None = None) -> str:
    try:
        import anndata
    except ImportError:
        return "skipped: anndata is not installed (pip install 'napari-gradcamo[plate]')"
    adata = anndata.AnnData(**anndata_parts(table, record))
    # no categoricals made on write: anndata < 0.12.7 cannot write the pandas-3 string categories it would make
    atomic_write(path, lambda p: adata.write_h5ad(p, convert_strings_to_categoricals=False))
    return str(path)
