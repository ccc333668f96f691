"""The run record: which checkpoint, image, masks and settings made a results table, and whether it finished.

Written as ``<table>.run.json`` beside the table and into the Parquet file's metadata
(:func:`napari_gradcamo.output.results.read_run_record` reads it back).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

RECORD_VERSION = 1
_PACKAGES = ("napari-gradcamo", "torch", "numpy", "pandas", "pyarrow", "grad-cam", "monai", "cellpose",
             "safetensors", "tifffile", "pydantic")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path, with_hash: bool = False) -> dict[str, Any]:
    """Absolute path, size (bytes) and modification time (UTC) of a file; its SHA-256 when asked."""
    path = Path(path).resolve()
    stat = path.stat()
    record = {"path": str(path), "size": stat.st_size,
              "mtime": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")}
    if with_hash:
        record["sha256"] = sha256_file(path)
    return record


def _source_record(path: str | Path | None, with_hash: bool = False) -> dict[str, Any] | None:
    """:func:`file_record` for a file; for something that is not a file (a napari layer, a model built in
    memory) its name only, said plainly."""
    if path is None or str(path) == "":
        return None
    if not Path(path).is_file():
        return {"path": str(path), "note": "not a file (in-memory data or a napari layer)"}
    return file_record(path, with_hash)


def package_versions() -> dict[str, str]:
    """Python's and the installed packages' versions (those of :data:`_PACKAGES` that are installed).

    Looked up once per process (each ``importlib.metadata`` lookup reads package metadata from disk, milliseconds
    per run record otherwise); a package installed or upgraded while the process runs is not seen until it
    restarts — nor is its new code, which the process has not imported."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    versions = [("python", platform.python_version())]
    for name in _PACKAGES:
        try:
            versions.append((name, importlib_metadata.version(name)))
        except importlib_metadata.PackageNotFoundError:
            continue
    return tuple(versions)


def _plain(settings: Any) -> Any:
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings


def start_record(kind: str, checkpoint: str | Path | None, checkpoint_metadata: dict | None,
                 inputs: dict[str, str | Path | None], settings: dict[str, Any]) -> dict[str, Any]:
    """A run record opened at the start of a run (``completed`` False until :func:`finish_record`)."""
    return {
        "record_version": RECORD_VERSION,
        "kind": kind,
        "checkpoint": None if checkpoint is None else {**_source_record(checkpoint, with_hash=True),
                                                       "metadata": checkpoint_metadata},
        "inputs": {name: _source_record(path) for name, path in inputs.items()},
        "settings": json.loads(json.dumps({name: _plain(value) for name, value in settings.items()}, default=str)),
        "versions": package_versions(),
        "started": now(),
        "ended": None,
        "completed": False,
    }


def finish_record(record: dict[str, Any], completed: bool, **counts: Any) -> dict[str, Any]:
    """The record with its end time, whether the run completed, and counts such as cells done/total."""
    return {**record, "ended": now(), "completed": bool(completed), **counts}


def same_run(record: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What differs between two records of the same outputs (checkpoint hash, inputs, settings)."""
    differences = []
    if (record.get("checkpoint") or {}).get("sha256") != (other.get("checkpoint") or {}).get("sha256"):
        differences.append("checkpoint")
    for name, stamp in (record.get("inputs") or {}).items():
        theirs = (other.get("inputs") or {}).get(name)
        if (stamp or {}).get("size") != (theirs or {}).get("size") or (stamp or {}).get("mtime") != (theirs or {}).get("mtime"):
            differences.append(name)
    if record.get("settings") != other.get("settings"):
        differences.append("settings")
    return differences


def setting_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Each setting that differs between two (nested) settings dicts, as ``name: old → new`` (``--resume``
    refusals name them instead of saying only 'the settings differ')."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines += setting_differences(old.get(key, "(absent)"), new.get(key, "(absent)"), name)
        return lines
    return [] if old == new else [f"{prefix or 'settings'}: {old!r} → {new!r}"]


def describe(record: dict[str, Any] | None) -> str:
    """One line for a GUI or a log: which checkpoint made the table, when, and whether the run completed."""
    if not record:
        return "no run record (made before records existed, or outside napari-gradcamo)"
    ckpt = record.get("checkpoint") or {}
    name = Path(str(ckpt.get("path", "?"))).name
    digest = f" (SHA-256 {ckpt['sha256'][:12]}…)" if ckpt.get("sha256") else ""
    state = "complete" if record.get("completed") else (
        f"INCOMPLETE: {record.get('cells_done', '?')} of {record.get('cells_total', '?')} cells")
    return f"made by {name}{digest}, {record.get('ended') or record.get('started')}, {state}"
