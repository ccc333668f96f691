"""The plate's model-level verdict: does this model look at the cells, judged on a sample of the plate.

``gradcamo plate run`` ends by judging the model (:func:`napari_gradcamo.audit.verdict.judge_fields`: a seeded
sample of cells drawn over a seeded sample of the plate's fields, every candidate layer, cell and context
hidden) and writes ``OUT/verdict.json``; ``gradcamo plate report`` shows it first, with the same words and
numbers as ``gradcamo audit``'s summary. The per-cell flags of the report stay those of the run's flag rule.
"""

from __future__ import annotations

import json
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np

from napari_gradcamo.plate import store

VERDICT_FILE = "verdict.json"
#: Fields the sample is drawn from (each is read whole; the cells are then sampled over them).
MAX_FIELDS = 8


def _field_masks(out: Path, task, run: dict) -> str | None:
    """The masks a field was audited with: its own file, its OME-Zarr label image, or the segmented file."""
    from napari_gradcamo.io.lazy import is_zarr
    from napari_gradcamo.io.ome_zarr import has_label_image

    if task.masks:
        return task.masks
    if is_zarr(task.image) and has_label_image(task.image):
        return ""
    segmentation = run.get("segmentation")
    if segmentation:
        tag = store.settings_hash(segmentation)[:12]
        path = out / "masks" / f"{store.safe_name(task.plate)}_{store.safe_name(task.well)}_s{int(task.site)}_{tag}.tif"
        return str(path) if path.is_file() else None
    return None


def plate_verdict(out, bundle, *, sample: int | None = None, seed: int = 0, cancel=None):
    """Judge ``bundle`` (the run's model) on a seeded sample of the plate run in ``out``; write
    ``OUT/verdict.json`` and return the :class:`~napari_gradcamo.audit.verdict.VerdictReport` (None when no
    field of the run has masks to judge on).

    Examples
    --------
    >>> report = plate_verdict("plate_out", load_checkpoint("model.safetensors"))  # doctest: +SKIP
    >>> print(report.summary_line())  # doctest: +SKIP
    """
    from napari_gradcamo.audit.run import AuditSettings
    from napari_gradcamo.audit.verdict import SAMPLE, judge_fields
    from napari_gradcamo.io.lazy import open_image, open_labels
    from napari_gradcamo.plate.sources import discover

    out = Path(out)
    run = store.read_run(out)
    known = {f.name for f in dataclass_fields(AuditSettings)}
    settings = AuditSettings(**{k: v for k, v in (run.get("settings") or {}).items() if k in known})
    tasks = discover(run["source"], run.get("layout") or None)
    # only fields this run finished (a failed field is not judged: its failure is in the report)
    finished = [t for t in tasks
                if store.finished_fingerprint(out, t) == store.field_fingerprint(run["fingerprint"], t)]
    usable = [(t, m) for t in finished if (m := _field_masks(out, t, run)) is not None]
    if not usable:
        return None
    rng = np.random.default_rng(seed)
    if len(usable) > MAX_FIELDS:
        usable = [usable[i] for i in sorted(rng.choice(len(usable), MAX_FIELDS, replace=False))]
    pairs = []
    for task, masks in usable:
        names = [n.strip() for n in task.channel_names.replace(",", ";").split(";") if n.strip()] or None
        pairs.append((open_image(task.image, task.axes or None, names), open_labels(task.image, masks or None)))
    report = judge_fields(bundle, pairs, sample=sample or SAMPLE, seed=seed, settings=settings, cancel=cancel)
    record = report.as_dict()
    record["fields"] = [t.field_id for t, _ in usable]
    record["summary"] = report.summary_line()
    store.atomic_write(out / VERDICT_FILE, lambda p: p.write_text(json.dumps(record, indent=1, default=float)))
    return report


def read_plate_verdict(out) -> dict | None:
    """``OUT/verdict.json`` as the report shows it: ``{"verdict", "reasons"}``, or None when there is none.
    A damaged file is reported as such, never shown as a verdict."""
    path = Path(out) / VERDICT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        verdict = str(record["verdict"])
        classes = record.get("classes") or {}
        reasons = [f"{name}: {c['verdict']} — {c['reason']}" for name, c in classes.items()]
        reasons.append(f"Grad-CAM read at layer {record.get('layer') or '—'}; {record.get('cells', 0)} cells "
                       f"sampled over {len(record.get('fields') or [])} fields.")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return {"verdict": "unreadable", "reasons": [f"{path.name} is damaged ({type(error).__name__}); rerun "
                                                     "'gradcamo plate run' to judge the model again."]}
    return {"verdict": verdict, "reasons": reasons}
