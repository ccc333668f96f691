"""The audit: crops → model → raw Grad-CAM → Grad-CAMO, as a generator of finished batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.audit.batch import ScoredBatch, batch_of, score_batch
from napari_gradcamo.audit.cam import CamEngine
from napari_gradcamo.audit.scoring import Score, inside_image_mask, score_cam
from napari_gradcamo.audit.settings import AuditSettings, check_audit_arguments  # noqa: F401  (AuditSettings: imported from here too)
from napari_gradcamo.crops.channels import resolve_channels
from napari_gradcamo.crops.extract import CellCrop, CellInfo, cell_table, extract_crop, window
from napari_gradcamo.crops.maps import CellCam
from napari_gradcamo.crops.resample import image_crop_shape, needs_resampling
from napari_gradcamo.io.images import Image, ImageError, check_labels_match
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
        layer = default_target_layer(list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names)))
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
    """Audit every cell (or ``only_labels``: one label id or a collection of them), yielding each finished
    batch; stop iterating to cancel. ``image`` may be a plain array (C, Z, Y, X) or (Z, Y, X) shaped like the
    labels, ``settings`` a dict of :class:`AuditSettings` fields; bad arguments raise :class:`ImageError` or
    ``ValueError`` naming the argument (:func:`check_audit_arguments`). ``cells``: ``cell_table(labels)`` when the caller has it already (it is not computed again).

    Parameters
    ----------
    image : Image or numpy.ndarray
        The stains (``CZYX``), or a plain array (C, Z, Y, X) or (Z, Y, X) shaped like the labels; channels
        are matched to the model's by name unless ``settings.channel_map`` says otherwise.
    labels : numpy.ndarray
        ``ZYX`` (or ``YX``) cell ids, 0 = background, same spatial shape as ``image``.
    bundle : ModelBundle
        A loaded checkpoint (:func:`~napari_gradcamo.models.checkpoint.load_checkpoint`).
    settings : AuditSettings or dict, optional
        Method, layer, target class, batch size, flag rule; default ``AuditSettings()``.
    only_labels : int or sequence of int, optional
        Audit only these cells.
    cancel : CancelToken, optional
        Checked before each batch; a cancel raises :class:`~napari_gradcamo.progress.Cancelled`.
    cells : sequence of CellInfo, optional
        The located cells, when the caller has them.

    Yields
    ------
    AuditBatch
        ``rows`` (the batch's rows of the results table), ``cams`` (label → :class:`CellCam`), ``done`` and
        ``total`` (cells).

    Raises
    ------
    ImageError
        Labels or channels that do not fit the image or the model.
    ValueError
        Settings or arguments of the wrong type or out of range.

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> from napari_gradcamo.models.bundled import bundled_model_path
    >>> from napari_gradcamo.synthetic.experiment import demo_field
    >>> field = demo_field()                              # 40 synthetic cells, 5 stains
    >>> bundle = ng.load_checkpoint(bundled_model_path("honest"))
    >>> for batch in ng.iter_audit(field.image, field.labels, bundle, ng.AuditSettings(batch_size=16)):
    ...     print(batch.done, "of", batch.total)
    16 of 40
    32 of 40
    40 of 40
    """
    # the same checks as the CLI's: integer ids ≥ 0, not a bool mask; settings typed and in range
    image, labels, settings, only_labels = check_audit_arguments(image, labels, bundle, settings, only_labels)
    if cancel is not None and not isinstance(cancel, CancelToken):
        raise ValueError(f"cancel must be a napari_gradcamo.CancelToken or None, not {type(cancel).__name__}.")
    meta = bundle.metadata
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
    with CamEngine(bundle.model, layer, settings.method, settings.device, head=meta.head,
                   precision=settings.precision) as engine:
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
    """Run :func:`iter_audit` to the end (or to a cancel) and gather the table, the maps and a run record.

    Arguments are checked as :func:`iter_audit` says (typed errors naming the argument and the fix).

    Parameters
    ----------
    image : Image or numpy.ndarray
        The stains (``CZYX``), or a plain array (see :func:`iter_audit`).
    labels : numpy.ndarray
        ``ZYX`` (or ``YX``) cell ids, 0 = background.
    bundle : ModelBundle
        A loaded checkpoint.
    settings : AuditSettings or dict, optional
        Default ``AuditSettings()``.
    only_labels : int or sequence of int, optional
        Audit only these cells.
    progress : callable, optional
        Called as ``progress(done, total, message)`` after each batch.
    cancel : CancelToken, optional
        Stops after the current batch; the finished rows are kept.

    Returns
    -------
    AuditResult
        ``table`` (one row per cell: scores, class probabilities, flag; columns in
        :data:`napari_gradcamo.output.results.SCHEMA`), ``cams`` (label → :class:`CellCam`), ``cancelled``
        and ``record`` (the run's provenance, for :func:`~napari_gradcamo.output.results.write_table`).

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> from napari_gradcamo.models.bundled import bundled_model_path
    >>> from napari_gradcamo.synthetic.experiment import demo_field
    >>> field = demo_field()
    >>> result = ng.run_audit(field.image, field.labels, ng.load_checkpoint(bundled_model_path("honest")))
    >>> len(result.table), result.record["completed"]
    (40, True)
    >>> bool(result.table["gradcamo"].between(0, 1).all())
    True

    A plain array, settings as a dict, and a few cells only:

    >>> result = run_audit(array_czyx, labels_zyx, load_checkpoint("model.safetensors"),  # doctest: +SKIP
    ...                    {"flag_on": "gradcamo", "threshold": 0.5}, only_labels=[3, 7])
    """
    from napari_gradcamo.output import provenance
    from napari_gradcamo.progress import Cancelled

    image, labels, settings, only_labels = check_audit_arguments(image, labels, bundle, settings, only_labels)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a function progress(done, total, message) or None, not "
                         f"{type(progress).__name__}.")
    meta = bundle.metadata
    record = provenance.start_record("audit", bundle.source or None, meta.model_dump(), {"image": image.source},
                                     {"audit": settings, "only_labels": only_labels})
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
