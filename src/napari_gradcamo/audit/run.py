"""The audit: crops → model → raw Grad-CAM → Grad-CAMO, as a generator of finished batches."""

from __future__ import annotations

import math
import numbers
import weakref
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.audit.batch import ScoredBatch, batch_of, score_batch
from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.scoring import SCORE_KINDS, Score, inside_image_mask, score_cam
from napari_gradcamo.crops.channels import resolve_channels
from napari_gradcamo.crops.extract import CellCrop, CellInfo, cell_table, extract_crop, window
from napari_gradcamo.crops.maps import CellCam
from napari_gradcamo.crops.resample import image_crop_shape, needs_resampling
from napari_gradcamo.io.images import Image, ImageError, as_label_volume, check_labels_match
from napari_gradcamo.models.layers import (
    check_target_layer,
    default_target_layer,
    list_target_layers,
    model_spatial_dims,
)
from napari_gradcamo.models.metadata import ModelBundle
from napari_gradcamo.output import results
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report


@dataclass
class AuditSettings:
    """How to audit: CAM method, layer (None = default), target class (None = predicted), batching, which
    score flags a cell below which threshold, and whether to add the occlusion drops.

    The default flag, ``normalised < 0.0``, marks cells that get no more attention than a uniform map would
    give them: it means the same for small and large cells (see docs/interpreting-scores.md). The paper's
    rule is ``flag_on="gradcamo", threshold=0.5``.
    """

    method: str = "gradcam"
    target_layer: str | None = None
    target_class: str | int | None = None
    batch_size: int = 8
    device: str | None = "auto"
    threshold: float = 0.0
    channel_map: Sequence[int] | None = None
    flag_on: str = "normalised"
    occlusion: bool = False
    #: 2D models only: explain this many z-planes around each cell's centre, plane by plane (None: the
    #: checkpoint's crop depth, i.e. one plane). Class probabilities are averaged over the planes.
    planes: int | None = None

    def validate(self) -> None:
        """Refuse out-of-range values (never coerce them): batch size ≥ 1, a known score to flag on, and a
        threshold in that score's range (gradcamo 0..1, normalised ≤ 1, lift ≥ 0; NaN flags nothing)."""
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size!r} must be a whole number ≥ 1.")
        if self.flag_on not in SCORE_KINDS:
            raise ValueError(f"flag_on {self.flag_on!r} is not a score; use one of {', '.join(SCORE_KINDS)}.")
        low, high = {"gradcamo": (0.0, 1.0), "normalised": (-math.inf, 1.0), "lift": (0.0, math.inf)}[self.flag_on]
        if not isinstance(self.threshold, numbers.Real) or not low <= float(self.threshold) <= high:
            raise ValueError(f"threshold {self.threshold!r} is outside the range of {self.flag_on} "
                             f"({low:g}..{high:g}); NaN would flag nothing.")


@dataclass
class AuditBatch:
    """Rows and maps for the cells finished in one batch, with overall progress."""

    rows: pd.DataFrame
    cams: dict[int, CellCam]
    done: int
    total: int


@dataclass
class AuditResult:
    table: pd.DataFrame
    cams: dict[int, CellCam] = field(default_factory=dict)
    cancelled: bool = False
    record: dict = field(default_factory=dict)  # provenance (output.provenance): pass it to results.write_table

def resolve_target_class(target: str | int | None, class_names: Sequence[str]) -> int | None:
    """Index of a target class given by name or index; None means 'predicted class'."""
    if target is None or target == "" or (isinstance(target, str) and target.lower() == "predicted"):
        return None
    if isinstance(target, str) and target in class_names:
        return class_names.index(target)
    try:
        index = int(target)
    except (TypeError, ValueError):
        raise ValueError(f"Unknown target class '{target}'; the model's classes are {', '.join(class_names)}.") from None
    if not 0 <= index < len(class_names):
        raise ValueError(f"Target class index {index} is out of range for {len(class_names)} classes.")
    return index


def _select_channels(data, channels: Sequence[int]):
    """The model's channels of ``data`` (C, z, y, x): a view when they are a run of consecutive channels
    (no copy of a whole, possibly huge, image), a copy otherwise. Crops are copied out of it anyway."""
    channels = [int(c) for c in channels]
    start = channels[0] if channels else 0
    if channels == list(range(start, start + len(channels))):
        return data[start : start + len(channels)]
    return data[channels]


def prepare(image: Image, labels: np.ndarray, bundle: ModelBundle, settings: AuditSettings,
            cells: Sequence[CellInfo] | None = None):
    """Validate inputs; return (image restricted to the model's channels, target layer name, cells).
    ``cells``: ``cell_table(labels)`` when the caller has it already."""
    check_labels_match(image, labels)
    meta = bundle.metadata
    channels = resolve_channels(image.channel_names, meta.channel_names, settings.channel_map)
    model_image = Image(_select_channels(image.data, channels), [meta.channel_names[i] for i in range(len(channels))],
                        image.voxel_size, image.source)
    layer = settings.target_layer or meta.target_layer
    if layer is None:
        layer = _default_layer(bundle.model, meta.crop_shape, len(meta.channel_names))
    else:
        check_target_layer(bundle.model, layer, meta.crop_shape, len(meta.channel_names))
    return model_image, layer, list(cells) if cells is not None else cell_table(labels)


def audit_crop_shape(bundle: ModelBundle, settings: AuditSettings) -> tuple[int, int, int]:
    """The crop (z, y, x) each cell is cut at: the checkpoint's, or ``settings.planes`` deep for a 2D model."""
    shape = tuple(int(s) for s in bundle.metadata.crop_shape)
    if settings.planes is None:
        return shape
    if model_spatial_dims(bundle.model) != 2:
        raise ValueError("planes (plane-by-plane audit) applies to 2D models only; this model is 3D.")
    if int(settings.planes) < 1:
        raise ValueError(f"planes must be ≥ 1, got {settings.planes}.")
    return (int(settings.planes), shape[1], shape[2])


_DEFAULT_LAYERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _default_layer(model, crop_shape: Sequence[int], in_channels: int) -> str:
    """:func:`default_target_layer` of ``model``, remembered per model, crop shape and module structure
    (finding it runs the model once, which costs as much as auditing a few cells with a large model)."""
    key = (tuple(int(s) for s in crop_shape), int(in_channels), tuple(name for name, _ in model.named_modules()))
    try:
        known = _DEFAULT_LAYERS.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced: no cache
        known = {}
    if key not in known:
        known[key] = default_target_layer(list_target_layers(model, crop_shape, in_channels))
    return known[key]


def cell_rows(crops: Sequence[CellCrop], cells: Sequence[CellInfo], scored: ScoredBatch, meta, settings, layer
              ) -> pd.DataFrame:
    """The results-table rows of one scored batch, flagged as ``settings`` say."""
    names = meta.class_names
    records = []
    for crop, cell, columns in zip(crops, cells, scored.result_columns(names, settings.method, layer)):
        records.append({
            "label": cell.label,
            "centroid_z": cell.centroid[0],
            "centroid_y": cell.centroid[1],
            "centroid_x": cell.centroid[2],
            "volume_voxels": cell.volume,
            "touches_border": crop.padded_fraction > 0,
            "pieces": cell.pieces,
            "padded_fraction": crop.padded_fraction,
            **columns,
        })
    table = results.conform(pd.DataFrame.from_records(records), names)
    return results.apply_threshold(table, settings.threshold, on=settings.flag_on)


def iter_audit(
    image: Image,
    labels: np.ndarray,
    bundle: ModelBundle,
    settings: AuditSettings | None = None,
    only_labels: Sequence[int] | None = None,
    cancel: CancelToken | None = None,
    cells: Sequence[CellInfo] | None = None,
) -> Iterator[AuditBatch]:
    """Audit every cell (or ``only_labels``), yielding each finished batch; stop iterating to cancel.
    ``cells``: ``cell_table(labels)`` when the caller has it already (it is not computed again)."""
    settings = settings or AuditSettings()
    settings.validate()
    meta = bundle.metadata
    labels = as_label_volume(labels)  # the same checks as the CLI's: integer ids ≥ 0, not a bool mask
    model_image, layer, cells = prepare(image, labels, bundle, settings, cells)
    if only_labels is not None:
        wanted = {int(l) for l in only_labels}
        unknown = wanted - {c.label for c in cells}
        if unknown:
            raise ImageError(f"Labels {sorted(unknown)} are not in the label image.")
        cells = [c for c in cells if c.label in wanted]
    target = resolve_target_class(settings.target_class, meta.class_names)
    model_crop = audit_crop_shape(bundle, settings)
    dims = model_spatial_dims(bundle.model)
    crop_shape = image_crop_shape(model_crop, meta.voxel_size, image.voxel_size, dims)
    as_trained = {"model_crop_shape": model_crop if needs_resampling(meta.voxel_size, image.voxel_size, dims) else None,
                  "crop_mode": meta.crop_mode, "padding_value": meta.padding_value}
    batch_size = int(settings.batch_size)
    meta.check_batch_memory(batch_size)  # estimated before any crop is allocated
    done = 0
    with CamEngine(bundle.model, layer, settings.method, settings.device, head=meta.head) as engine:
        for start in range(0, len(cells), batch_size):
            check(cancel, "the audit")
            chunk = cells[start : start + batch_size]
            crops = [extract_crop(model_image, labels, c, crop_shape) for c in chunk]
            scored = score_batch(engine, batch_of(crops), meta.normalization, [target] * len(chunk),
                                 occlusion=settings.occlusion, **as_trained)
            rows = cell_rows(crops, chunk, scored, meta, settings, layer)
            cams = {c.label: CellCam(c.label, r, c.origin, crop_shape) for c, r in zip(crops, scored.raw_maps)}
            done += len(chunk)
            yield AuditBatch(rows, cams, done, len(cells))


def run_audit(
    image: Image,
    labels: np.ndarray,
    bundle: ModelBundle,
    settings: AuditSettings | None = None,
    only_labels: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> AuditResult:
    """Run :func:`iter_audit` to the end (or to a cancel) and gather the table, the maps and a run record."""
    from napari_gradcamo.output import provenance
    from napari_gradcamo.progress import Cancelled

    meta = bundle.metadata
    record = provenance.start_record("audit", bundle.source or None, meta.model_dump(), {"image": image.source},
                                     {"audit": settings or AuditSettings(), "only_labels": only_labels})
    tables, cams, cancelled = [], {}, False
    try:
        for batch in iter_audit(image, labels, bundle, settings, only_labels, cancel):
            tables.append(batch.rows)
            cams.update(batch.cams)
            report(progress, batch.done, batch.total, f"{batch.done}/{batch.total} cells")
    except Cancelled:
        cancelled = True
    table = pd.concat(tables, ignore_index=True) if tables else results.empty_table(meta.class_names)
    record = provenance.finish_record(record, not cancelled, cells_done=len(table))
    return AuditResult(results.conform(table, meta.class_names), cams, cancelled, record)


def rescore(cam: CellCam, labels: np.ndarray) -> Score:
    """Recompute one cell's scores from its cached map after its mask was edited (crop position unchanged)."""
    label_crop, padding = window(labels, cam.origin, cam.crop_shape)
    cell_mask = label_crop == cam.label
    grid = cam.on_crop_grid()
    return score_cam(grid, cell_mask, (label_crop > 0) & ~cell_mask, inside_image_mask(grid.shape, padding))
