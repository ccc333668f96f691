"""A plate audit on dask.distributed: one task per field (plus a cellpose task for fields without masks),
the model loaded once per worker thread, each field's result written atomically by the worker that made it,
fields already finished under the same checkpoint and settings skipped.

A worker killed mid-field loses only that field's work: the scheduler reruns the task elsewhere, and since a
field's cells are written in one atomic rename, no cell is lost or written twice.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from napari_gradcamo.audit.run import AuditSettings, iter_audit
from napari_gradcamo.io.images import ImageError
from napari_gradcamo.plate import store
from napari_gradcamo.plate.sources import FieldTask, discover, plate_geometry
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report

_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


@dataclass
class FieldOutcome:
    """What became of one field: ``done``, ``skipped`` (finished before with the same fingerprint) or
    ``failed`` (with the reason); worker statistics when it ran (``cpu_seconds``: CPU time of the worker's
    process during the task, which contention from other processes does not inflate)."""

    field: str
    status: str
    cells: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    worker: str = ""
    model_loads: int = 0
    peak_rss_mb: float = 0.0
    reason: str = ""
    done: int = 0
    total: int = 0


def _worker_key() -> str:
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        address = f"pid{os.getpid()}"
    return f"{address}#{threading.get_ident()}"


def worker_model(checkpoint: str, digest: str, trusted_factory: str | None = None):
    """The checkpoint's model for this worker thread, loaded on first use (a CamEngine hooks the model, so
    two threads never share one; ``trusted_factory`` as for ``load_checkpoint``). Returns (bundle, how many
    times this thread has loaded a model)."""
    from napari_gradcamo.models.checkpoint import load_checkpoint

    key = _worker_key()
    with _MODELS_LOCK:
        loads, cached_digest, bundle = _MODELS.get(key, (0, None, None))
        if cached_digest != digest:
            loads, bundle = loads + 1, load_checkpoint(checkpoint, trusted_factory=trusted_factory)
            _MODELS[key] = (loads, digest, bundle)
    return bundle, loads


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class FieldFailure:
    """What a worker task returns instead of raising: the reason a field failed, in one line (so the
    scheduler logs no "Compute Failed … Traceback" and the run reports the field by name)."""

    reason: str


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    if isinstance(error, OSError) and error.filename:
        text = f"{error.strerror or text} ({error.filename})"
    return f"{type(error).__name__}: {text}"


def audit_field(task: FieldTask, masks, checkpoint: str, digest: str, settings: AuditSettings,
                fingerprint: str, run: str, out: str, torch_threads: int,
                trusted_factory: str | None = None) -> dict | FieldFailure:
    """The task a worker runs for one field (:func:`_audit_field`); a failure is returned as a
    :class:`FieldFailure`, never raised."""
    if isinstance(masks, FieldFailure):  # its segmentation failed
        return masks
    try:
        return _audit_field(task, masks, checkpoint, digest, settings, fingerprint, run, out, torch_threads,
                            trusted_factory)
    except Exception as error:  # any field's error: reported by name, the other fields go on
        return FieldFailure(_reason(error))


def _audit_field(task: FieldTask, masks: str, checkpoint: str, digest: str, settings: AuditSettings,
                 fingerprint: str, run: str, out: str, torch_threads: int, trusted_factory: str | None = None) -> dict:
    """Lazy image, labels, the audit loop, one atomic result."""
    import pandas as pd
    import torch

    from napari_gradcamo.io.lazy import open_image, open_labels
    from napari_gradcamo.output import results

    started, cpu_started = time.perf_counter(), time.process_time()
    torch.set_num_threads(max(1, int(torch_threads)))
    bundle, loads = worker_model(checkpoint, digest, trusted_factory)
    names = [n.strip() for n in task.channel_names.replace(",", ";").split(";") if n.strip()] or None
    image = open_image(task.image, task.axes or None, names)
    labels = open_labels(task.image, masks or task.masks)
    tables, cams = [], []
    for batch in iter_audit(image, labels, bundle, settings):
        tables.append(batch.rows)
        cams.extend(batch.cams.values())
    class_names = bundle.metadata.class_names
    table = pd.concat(tables, ignore_index=True) if tables else results.empty_table(class_names)
    table = store.with_normalised(table.assign(**task.metadata()))
    store.write_field(Path(out), task, fingerprint, run, table, cams)
    return {"cells": len(table), "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started, "worker": _worker_key(),
            "model_loads": loads, "peak_rss_mb": _peak_rss_mb()}


def segment_field(task: FieldTask, segmentation, out: str) -> str | FieldFailure:
    """The cellpose task of a field without masks (:func:`_segment_field`); a failure is returned as a
    :class:`FieldFailure` for the audit task to hand on."""
    try:
        return _segment_field(task, segmentation, out)
    except Exception as error:
        return FieldFailure(f"segmentation failed: {_reason(error)}")


def _segment_field(task: FieldTask, segmentation, out: str) -> str:
    """The whole field is read (cellpose needs it), the labels are written atomically to ``OUT/masks`` and
    their path handed to the audit task."""
    import tifffile

    from napari_gradcamo.io.images import make_image
    from napari_gradcamo.io.lazy import materialize, open_image
    from napari_gradcamo.segment.cellpose import segment

    tag = store.settings_hash(asdict(segmentation))[:12]
    name = f"{store.safe_name(task.plate)}_{store.safe_name(task.well)}_s{int(task.site)}_{tag}.tif"
    path = Path(out) / "masks" / name
    if not path.exists():
        lazy = open_image(task.image, task.axes or None)
        image = make_image(materialize(lazy.data), "CZYX", lazy.channel_names, lazy.voxel_size, task.image)
        labels = segment(image, segmentation)
        store.atomic_write(path, lambda p: tifffile.imwrite(p, labels, compression="zlib", photometric="minisblack"))
    return str(path)


def _needs_segmentation(task: FieldTask) -> bool:
    """No masks file and not an OME-Zarr field with its own label image."""
    from napari_gradcamo.io.lazy import is_zarr
    from napari_gradcamo.io.ome_zarr import has_label_image

    return not task.masks and not (is_zarr(task.image) and has_label_image(task.image))


def preflight(checkpoint, settings: AuditSettings, workers: int | None = None, torch_threads: int = 1,
              trusted_factory: str | None = None) -> str:
    """Everything a worker would refuse, refused here before any cluster starts: the settings, the worker
    counts, and the checkpoint, loaded once (an untrusted ``custom`` factory, bad metadata or weights are
    refused with their message instead of one worker traceback per field). Returns the checkpoint's path."""
    from napari_gradcamo.models.checkpoint import load_checkpoint

    if not isinstance(settings, AuditSettings):
        raise ValueError(f"settings must be an AuditSettings, not {type(settings).__name__}.")
    settings.validate()
    for name, value, lowest in (("workers", workers, 1), ("torch_threads", torch_threads, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lowest):
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be a whole number ≥ {lowest}, got {value!r}.")
    path = Path(checkpoint).resolve()
    if not path.is_file():
        raise ImageError(f"Checkpoint {path} does not exist.")
    load_checkpoint(path, trusted_factory=trusted_factory)  # the workers load it the same way
    return str(path)


def make_client(workers: int | None = None, scheduler: str | None = None, processes: bool = True):
    """A client of the cluster at ``scheduler``, else of a LocalCluster of ``workers`` single-threaded
    workers (default: one per CPU core; worker processes get :class:`~napari_gradcamo.plate.worker_exit.PromptExit`
    so the cluster closes without killing them). Returns (client, cluster or None)."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    n = int(workers or os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}.")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None)
    client = Client(cluster)
    if processes:  # our own worker processes: let them exit promptly when the cluster closes
        from napari_gradcamo.plate.worker_exit import PromptExit

        client.register_plugin(PromptExit())
    return client, cluster


def iter_plate(source, checkpoint, out, settings: AuditSettings | None = None, *, layout=None,
               segmentation=None, client=None, workers: int | None = None, scheduler: str | None = None,
               torch_threads: int = 1, cancel: CancelToken | None = None,
               trusted_factory: str | None = None) -> Iterator[FieldOutcome]:
    """Audit every field of ``source``, yielding a :class:`FieldOutcome` as each finishes (skipped fields
    first). Uses ``client`` if given, else makes one (:func:`make_client`) and closes it at the end.
    ``trusted_factory``: the ``package.module:function`` you trust to build a ``custom`` checkpoint's network
    (as ``load_checkpoint``'s; a checkpoint that asks for another is refused here, before any worker starts)."""
    from distributed import as_completed

    settings = settings or AuditSettings()
    out = Path(out)
    checkpoint = preflight(checkpoint, settings, workers, torch_threads, trusted_factory)
    tasks = discover(source, layout)
    digest = store.file_digest(checkpoint)
    fingerprint = store.run_fingerprint(digest, settings, segmentation)
    out.mkdir(parents=True, exist_ok=True)
    store.write_run(out, {"fingerprint": fingerprint, "checkpoint": checkpoint, "checkpoint_sha256": digest,
                          "source": str(Path(source).resolve()), "layout": str(layout or ""),
                          "settings": asdict(settings), "fields": len(tasks), "plates": plate_geometry(source),
                          "segmentation": asdict(segmentation) if segmentation is not None else None})
    keys = {t.field_id: store.field_fingerprint(fingerprint, t) for t in tasks}
    todo = [t for t in tasks if store.finished_fingerprint(out, t) != keys[t.field_id]]
    pending = {t.field_id for t in todo}
    done, total = 0, len(tasks)
    for task in tasks:
        if task.field_id not in pending:
            done += 1
            yield FieldOutcome(task.field_id, "skipped", done=done, total=total)
    if not todo:
        return
    own = client is None
    cluster = None
    if own:
        client, cluster = make_client(workers, scheduler)
    futures = {}
    try:
        for task in todo:
            masks = task.masks
            if segmentation is not None and _needs_segmentation(task):
                masks = client.submit(segment_field, task, segmentation, str(out), pure=False,
                                      key=f"segment-{keys[task.field_id][:20]}")
            future = client.submit(audit_field, task, masks, checkpoint, digest, settings, keys[task.field_id],
                                   fingerprint, str(out), torch_threads, trusted_factory, pure=False,
                                   key=f"audit-{keys[task.field_id][:20]}")
            futures[future] = task
        for future in as_completed(list(futures)):
            check(cancel, "the plate audit")
            task = futures.pop(future)
            done += 1
            result = future.result() if future.status == "finished" else FieldFailure(_reason(future.exception()))
            if isinstance(result, FieldFailure):
                reason = result.reason
                try:
                    store.write_failure(out, task, keys[task.field_id], fingerprint, reason)
                except OSError as error:  # e.g. the disk is full: the field is still reported
                    reason += f" (its failure record could not be written: {_reason(error)})"
                yield FieldOutcome(task.field_id, "failed", reason=reason, done=done, total=total)
            else:
                yield FieldOutcome(task.field_id, "done", done=done, total=total, **result)
            future.release()  # the result is on disk: a worker lost later must not make the scheduler redo it
    finally:
        client.cancel(list(futures))
        if own:
            client.close()
            if cluster is not None:
                cluster.close()


def run_plate(source, checkpoint, out, settings: AuditSettings | None = None, *, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, **kwargs) -> tuple[list[FieldOutcome], dict]:
    """Run :func:`iter_plate` to the end, then write the plate table; returns the outcomes and what was written."""
    outcomes = []
    for outcome in iter_plate(source, checkpoint, out, settings, cancel=cancel, **kwargs):
        outcomes.append(outcome)
        report(progress, outcome.done, outcome.total, f"{outcome.field} {outcome.status}")
    record = store.read_run(Path(out))
    table, _ = store.collect(Path(out), record["fingerprint"])
    return outcomes, store.write_plate_table(Path(out), table, record)
