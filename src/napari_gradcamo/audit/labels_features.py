"""Per-cell result bookkeeping for a label image, without Qt.

The napari plugin keeps one table per Labels layer in ``labels.features``: one row per label id, the
columns of :data:`napari_gradcamo.output.results.SCHEMA` (``prob_<class>`` included), plus

* ``index`` = the label id (napari looks rows up by this column for its status bar),
* ``flag_override``: ``""`` (follow the threshold), ``"flagged"`` or ``"not flagged"`` (set by hand).

Every function here takes a table and returns a new one; nothing is changed in place. The same
functions serve the table view, the label colours and the export, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.crops.extract import CellInfo, cell_table, crop_origin
from napari_gradcamo.output import results

INDEX = "index"
OVERRIDE = "flag_override"
OVERRIDE_FLAGGED = "flagged"
OVERRIDE_UNFLAGGED = "not flagged"
OVERRIDE_VALUES = ("", OVERRIDE_FLAGGED, OVERRIDE_UNFLAGGED)
REASON_NOT_AUDITED = "not audited yet"
REASON_MOVED = "mask edited: the cell's crop moved, its Grad-CAM must be recomputed"
REASON_NEW = "new label (painted after the audit)"

#: colours (RGBA, 0..1) of the "flag" colouring; blue / orange is safe for red-green colour blindness.
#: 'not audited' is a faint grey so that at the labels layer's opacity over bright stains it never reads
#: like the saturated "looks at the cell" blue.
COLOR_OK = (0.0, 0.42, 1.0, 1.0)
COLOR_FLAGGED = (1.0, 0.48, 0.0, 1.0)
COLOR_NOT_AUDITED = (0.55, 0.55, 0.55, 0.3)
COLOR_UNDEFINED = (0.85, 0.05, 0.15, 1.0)
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
SCORE_COLORMAP = "viridis"
COLOR_MODES = ("flag", "score")
#: columns a person may colour the cells by, when the table has them (newer score columns included)
SCORE_COLUMNS = ("gradcamo", "lift", "normalised", "chance", "probability")
COLUMN_TITLES = {"gradcamo": "Grad-CAMO"}
#: which checkpoint produced a row (the file name); '' for rows never audited
MODEL = "model"


# --------------------------------------------------------------------------- schema


def class_names_of(table: pd.DataFrame) -> list[str]:
    """Model classes named by the table's ``prob_<class>`` columns, in column order."""
    p = results.PROBABILITY_PREFIX
    return [c[len(p):] for c in table.columns if isinstance(c, str) and c.startswith(p)]


def _conformed(table: pd.DataFrame, names: Sequence[str]) -> bool:
    """True when ``table`` already is what :func:`ensure_schema` makes of it (cheap checks, no copy)."""
    front = [INDEX] + results.column_order(names)
    columns = list(table.columns)
    if columns[: len(front)] != front or OVERRIDE not in table or columns.count(INDEX) != 1:
        return False
    index = table.index
    if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
        return False
    label = table["label"]
    if label.dtype != np.int64 or not label.is_monotonic_increasing or not np.array_equal(table[INDEX], label):
        return False
    if table["flagged"].dtype != bool or table["touches_border"].dtype != bool:
        return False
    for column in (*results.TEXT_COLUMNS, OVERRIDE):
        if table[column].dtype != object or table[column].isna().any():
            return False
    return not (table["status"] == "").any()


def ensure_schema(table: pd.DataFrame | None, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The table with every schema column (plus ``index`` and ``flag_override``), sorted by label."""
    if table is not None and "label" not in table and INDEX in table:
        table = table.assign(label=table[INDEX])
    if table is None or "label" not in table:
        table = pd.DataFrame({"label": pd.Series(dtype="int64")})
    names = list(class_names) if class_names is not None else class_names_of(table)
    if _conformed(table, names):
        return table.copy()
    out = results.conform(table, names)
    for column in results.TEXT_COLUMNS:
        out[column] = out[column].fillna("").astype(object)
    out["status"] = out["status"].replace("", results.STATUS_NOT_AUDITED)
    if OVERRIDE not in out:
        out[OVERRIDE] = ""
    out[OVERRIDE] = out[OVERRIDE].fillna("").astype(object)
    out["label"] = out["label"].astype("int64")
    out[INDEX] = out["label"].to_numpy()
    out["flagged"] = out["flagged"].fillna(False).astype(bool)
    out["touches_border"] = out["touches_border"].fillna(False).astype(bool)
    out = out.sort_values("label", kind="stable").reset_index(drop=True)
    front = [INDEX] + [c for c in out.columns if c != INDEX]
    return out[front]


def _not_audited(cells: Iterable[CellInfo], class_names: Sequence[str], reason: str = REASON_NOT_AUDITED) -> pd.DataFrame:
    records = [
        {
            "label": c.label,
            "centroid_z": c.centroid[0],
            "centroid_y": c.centroid[1],
            "centroid_x": c.centroid[2],
            "volume_voxels": c.volume,
            "status": results.STATUS_NOT_AUDITED,
            "reason": reason,
            "flagged": False,
        }
        for c in cells
    ]
    table = pd.DataFrame.from_records(records) if records else pd.DataFrame({"label": pd.Series(dtype="int64")})
    return ensure_schema(table, class_names)


def init_features(
    labels: np.ndarray,
    existing: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    cells: Sequence[CellInfo] | None = None,
) -> pd.DataFrame:
    """One row per label of ``labels``: rows of ``existing`` are kept, other labels are 'not audited'.

    Rows of ``existing`` whose label is gone are dropped; columns from other tools are kept. ``cells``:
    ``cell_table(labels)`` when the caller has it already.
    """
    if cells is None:
        labels = np.asarray(labels)
        cells = cell_table(labels[np.newaxis] if labels.ndim == 2 else labels)
    names = list(class_names) if class_names is not None else (class_names_of(existing) if existing is not None else [])
    fresh = _not_audited(cells, names)
    if existing is None or len(existing) == 0 or "label" not in existing:
        return reflag(fresh, threshold)
    old = ensure_schema(existing, names)
    present = set(fresh["label"])
    old = old[old["label"].isin(present)]
    missing = fresh[~fresh["label"].isin(set(old["label"]))]
    table = pd.concat([old, missing], ignore_index=True) if len(missing) else old
    return reflag(ensure_schema(table, names), threshold)


# --------------------------------------------------------------------------- rows and flags


@dataclass(frozen=True)
class FlagRule:
    """Which score flags a cell below which value (see :class:`napari_gradcamo.audit.run.AuditSettings`)."""

    threshold: float
    on: str = "normalised"

    def describe(self) -> str:
        return f"{column_title(self.on)} < {self.threshold:.2f}"


def as_rule(threshold: "float | FlagRule") -> FlagRule:
    """A :class:`FlagRule`; a bare number is a threshold on raw Grad-CAMO (the paper's rule)."""
    return threshold if isinstance(threshold, FlagRule) else FlagRule(float(threshold), "gradcamo")


def reflag(table: pd.DataFrame, threshold: "float | FlagRule") -> pd.DataFrame:
    """``flagged`` = the rule's score below its threshold, or undefined (audited cells), unless set by hand."""
    if len(table) == 0:
        out = table.copy()
        out["flagged"] = out["flagged"].astype(bool)
        return out
    rule = as_rule(threshold)
    out = results.apply_threshold(table, rule.threshold, on=rule.on)
    override = out[OVERRIDE].astype(str) if OVERRIDE in out else pd.Series("", index=out.index)
    out.loc[override == OVERRIDE_FLAGGED, "flagged"] = True
    out.loc[override == OVERRIDE_UNFLAGGED, "flagged"] = False
    out["flagged"] = out["flagged"].astype(bool)
    return out


def merge_rows(table: pd.DataFrame, rows: pd.DataFrame, threshold: "float | FlagRule") -> pd.DataFrame:
    """Replace (or add) the rows of ``rows``' labels by those rows, keeping hand flags and other tools' columns."""
    names = class_names_of(rows) or class_names_of(table)
    table = ensure_schema(table, names)
    rows = ensure_schema(rows, names)
    if len(rows) == 0:
        return reflag(table, threshold)
    previous = table.set_index("label")
    rows = rows.copy()
    for column in table.columns:
        if column in ("label", INDEX):
            continue
        if column == OVERRIDE or column not in rows.columns:
            rows[column] = rows["label"].map(previous[column])
    rows[OVERRIDE] = rows[OVERRIDE].fillna("").astype(object)
    keep = table[~table["label"].isin(set(rows["label"]))]
    merged = pd.concat([keep, rows], ignore_index=True) if len(keep) else rows
    return reflag(ensure_schema(merged.sort_values("label", kind="stable", ignore_index=True), names), threshold)


def restart(table: pd.DataFrame | None, labels: np.ndarray, class_names: Sequence[str], threshold: "float | FlagRule",
            cells: Sequence[CellInfo] | None = None) -> pd.DataFrame:
    """A fresh 'not audited' table for a new run over all cells, keeping only the hand flags."""
    fresh = init_features(labels, None, class_names, threshold, cells)
    if table is not None and OVERRIDE in table and len(table):
        hand = table.set_index("label")[OVERRIDE]
        fresh[OVERRIDE] = fresh["label"].map(hand).fillna("")
    return reflag(fresh, threshold)


def set_override(table: pd.DataFrame, labels: Iterable[int], value: str, threshold: "float | FlagRule") -> pd.DataFrame:
    """Flag (``"flagged"``), unflag (``"not flagged"``) or hand back to the threshold (``""``) some cells."""
    if value not in OVERRIDE_VALUES:
        raise ValueError(f"flag override must be one of {OVERRIDE_VALUES}, got {value!r}.")
    out = table.copy()
    out.loc[out["label"].isin({int(l) for l in labels}), OVERRIDE] = value
    return reflag(out, threshold)


def toggle_flag(table: pd.DataFrame, label: int, threshold: "float | FlagRule") -> pd.DataFrame:
    """Invert one cell's current flag by hand (a second toggle back to the threshold's verdict clears it)."""
    row = table.index[table["label"] == int(label)]
    if len(row) == 0:
        raise KeyError(f"label {label} has no row")
    now = bool(table.loc[row[0], "flagged"])
    auto = bool(reflag(set_override(table.loc[row], [label], "", threshold), threshold)["flagged"].iloc[0])
    wanted = not now
    value = "" if wanted == auto else (OVERRIDE_FLAGGED if wanted else OVERRIDE_UNFLAGGED)
    return set_override(table, [label], value, threshold)


def row_of(table: pd.DataFrame, label: int) -> pd.Series | None:
    hit = table.index[table["label"] == int(label)]
    return table.loc[hit[0]] if len(hit) else None


# --------------------------------------------------------------------------- mask edits


def cell_stats(labels: np.ndarray, label: int) -> CellInfo | None:
    """Centroid, volume and bounding box of one label (None when the label no longer exists)."""
    coords = np.nonzero(labels == int(label))
    if coords[0].size == 0:
        return None
    bbox = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    return CellInfo(int(label), tuple(float(c.mean()) for c in coords), int(coords[0].size), bbox)


def labels_in_edit(atoms: Sequence) -> set[int]:
    """Label ids touched by a napari ``labels.events.paint`` history item (old and new values).

    Accepts napari's 3-tuples ``(indices, old_values, new_values)`` and its masked paint atoms
    (objects with ``old_values`` and ``new_value``).
    """
    touched: set[int] = set()
    for atom in atoms or ():
        if hasattr(atom, "old_values"):
            values = (atom.old_values, getattr(atom, "new_value", 0))
        elif isinstance(atom, (tuple, list)) and len(atom) == 3:
            values = (atom[1], atom[2])
        else:
            continue
        for v in values:
            touched.update(int(x) for x in np.unique(np.asarray(v)).ravel())
    touched.discard(0)
    return touched


@dataclass
class EditOutcome:
    """What a mask edit did to the table."""

    table: pd.DataFrame
    removed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    rescored: list[int] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)
    #: labels that came back (e.g. undo after a delete) with their earlier row (and map, when it still fits)
    restored: list[int] = field(default_factory=list)
    #: the rows of the removed labels, as they were (keep them to restore a cell an undo brings back)
    removed_rows: dict = field(default_factory=dict)


@dataclass
class EditMeasure:
    """What :func:`measure_edit` found for edited labels: each one's geometry (None: gone) and, for those whose
    cached map still fits their crop, the map used and the new score. Measured off the GUI thread (a scan of
    the whole label image per label); :func:`apply_mask_edit` then only updates rows."""

    info: dict = field(default_factory=dict)
    #: label -> (the CellCam rescored, its :class:`~napari_gradcamo.audit.scoring.Score`)
    scores: dict = field(default_factory=dict)
    #: the name of the thread that measured (the audit dock records it)
    thread: str = ""


def measure_edit(labels: np.ndarray, touched: Iterable[int], cams: Mapping[int, object]) -> EditMeasure:
    """Centroid, volume and box of each ``touched`` label in ``labels``, and the score of each one whose map
    in ``cams`` (``{label: CellCam}``: the cached map, or the one kept for a deleted cell) still fits its crop."""
    import threading

    from napari_gradcamo.audit.run import rescore

    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    out = EditMeasure(thread=threading.current_thread().name)
    for label in sorted({int(t) for t in touched if int(t) > 0}):
        info = out.info[label] = cell_stats(labels, label)
        cam = cams.get(label)
        if info is not None and cam is not None and \
                tuple(crop_origin(info.centroid, cam.crop_shape)) == tuple(cam.origin):
            out.scores[label] = (cam, rescore(cam, labels))
    return out


def _same_cell(row, info: CellInfo) -> bool:
    """True when ``info`` (a label now in the masks) has the voxel count and centroid of the deleted ``row``."""
    try:
        return int(row["volume_voxels"]) == int(info.volume) and bool(np.allclose(
            [float(row["centroid_z"]), float(row["centroid_y"]), float(row["centroid_x"])], info.centroid))
    except (KeyError, TypeError, ValueError):
        return False


def apply_mask_edit(
    table: pd.DataFrame,
    labels: np.ndarray,
    touched: Iterable[int],
    cams: Mapping[int, object],
    threshold: "float | FlagRule",
    deleted: Mapping[int, tuple] | None = None,
    measured: EditMeasure | None = None,
) -> EditOutcome:
    """Update rows after ``touched`` labels were painted, erased or filled.

    A deleted label loses its row (kept in ``removed_rows``); a new label gets a 'not audited' row, unless
    ``deleted`` (``{label: (row, CellCam or None)}``, rows an earlier edit removed) holds it with the same
    voxel count and centroid (an undo, not a new cell painted with a freed id): then its row comes back and is rescored with that map like any other edited cell (an undo after a delete gives back
    the same score). An audited cell whose crop did not move is rescored with its cached CAM
    (``cams[label]``, an :class:`~napari_gradcamo.audit.run.CellCam`); one whose crop moved is marked
    'not audited' and listed in ``moved`` for the caller to recompute.

    ``measured`` (from :func:`measure_edit`, e.g. run in a worker on the same ``labels``) supplies the cells'
    geometry and scores, so only the rows are updated here; a label it lacks, or whose map changed since, is
    measured here.
    """
    from napari_gradcamo.audit.run import rescore

    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    names = class_names_of(table)
    out = ensure_schema(table, names).set_index("label", drop=False)
    outcome = EditOutcome(out)
    new_rows = []
    for label in sorted({int(l) for l in touched if int(l) > 0}):
        info = measured.info[label] if measured is not None and label in measured.info else cell_stats(labels, label)
        if info is None:
            if label in out.index:
                outcome.removed_rows[label] = out.loc[label].copy()
                out = out.drop(index=label)
                outcome.removed.append(label)
            continue
        kept = None
        if label not in out.index:
            kept = (deleted or {}).get(label)
            if kept is not None and not _same_cell(kept[0], info):
                kept = None  # a new cell painted with a deleted cell's id: not the cell that was deleted
            if kept is None:
                new_rows.append(info)
                outcome.added.append(label)
                continue
            out = pd.concat([out, ensure_schema(pd.DataFrame([kept[0]]), names).set_index("label", drop=False)])
            outcome.restored.append(label)
        out.loc[label, ["centroid_z", "centroid_y", "centroid_x"]] = info.centroid
        out.loc[label, "volume_voxels"] = info.volume
        cam = cams.get(label) if kept is None else (kept[1] if len(kept) > 1 else None)
        if kept is not None and cam is None:
            out.loc[label, "status"] = results.STATUS_NOT_AUDITED
            out.loc[label, "reason"] = REASON_NEW
            continue
        if cam is None:
            continue
        if tuple(crop_origin(info.centroid, cam.crop_shape)) == tuple(cam.origin):
            known = measured.scores.get(label) if measured is not None else None
            s = known[1] if known is not None and known[0] is cam else rescore(cam, labels)
            out.loc[label, ["gradcamo", "chance", "neighbour_share", "background_share", "outside_share"]] = (
                s.gradcamo, s.chance, s.neighbour_share, s.background_share, s.outside_share
            )
            out.loc[label, "reason"] = s.reason
            out.loc[label, "status"] = results.STATUS_AUDITED
            outcome.rescored.append(label)
        else:
            out.loc[label, "status"] = results.STATUS_NOT_AUDITED
            out.loc[label, "reason"] = REASON_MOVED
            outcome.moved.append(label)
    out = out.reset_index(drop=True)
    if new_rows:
        out = pd.concat([out, _not_audited(new_rows, names, REASON_NEW)], ignore_index=True)
    outcome.table = reflag(ensure_schema(out, names), threshold)
    return outcome


# --------------------------------------------------------------------------- colours and legend


def color_columns(table: pd.DataFrame | None) -> list[str]:
    """The score columns of :data:`SCORE_COLUMNS` that ``table`` has, in that order."""
    if table is None:
        return ["gradcamo"]
    return [c for c in SCORE_COLUMNS if c in table and pd.api.types.is_numeric_dtype(table[c])]


def column_title(column: str) -> str:
    """How a score column is named to a person."""
    return COLUMN_TITLES.get(column, column.replace("_", " "))


def score_range(values: np.ndarray) -> tuple[float, float]:
    """The span of the finite ``values`` the colours stretch over (so 0.03–0.46 does not all look alike)."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _score_rgba(values: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    from matplotlib import colormaps

    lo, hi = value_range
    return colormaps[SCORE_COLORMAP](np.clip((np.asarray(values, float) - lo) / (hi - lo), 0.0, 1.0))


def label_colors(table: pd.DataFrame, mode: str = "flag", column: str = "gradcamo") -> dict:
    """``{label: RGBA}`` for a ``DirectLabelColormap``: by flag (blue ok / orange flagged) or by a score column,
    the colours spanning the scores seen (:func:`score_range`).

    Labels without a row (``None`` key) and 'not audited' cells are faint grey; background (0) is transparent.
    """
    if mode not in COLOR_MODES:
        raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}.")
    colors: dict = {None: np.array(COLOR_NOT_AUDITED), 0: np.array(TRANSPARENT)}
    if len(table) == 0:
        return colors
    labels = table["label"].to_numpy(dtype=np.int64)
    audited = (table["status"] == results.STATUS_AUDITED).to_numpy()
    flagged = table["flagged"].to_numpy(dtype=bool)
    rgba = np.tile(np.array(COLOR_NOT_AUDITED), (len(table), 1))
    if mode == "flag":
        rgba[audited & ~flagged] = COLOR_OK
        rgba[flagged] = COLOR_FLAGGED
    else:
        score = table[column].to_numpy(dtype=float) if column in table else np.full(len(table), np.nan)
        defined = audited & np.isfinite(score)
        if defined.any():
            rgba[defined] = _score_rgba(score[defined], score_range(score[defined]))
        rgba[audited & ~np.isfinite(score)] = COLOR_UNDEFINED
    for label, color in zip(labels, rgba):
        colors[int(label)] = color
    return colors


@dataclass
class Legend:
    """What the colours mean: swatches (text, RGBA) and, in score mode, a gradient over ``value_range``."""

    title: str
    swatches: list[tuple[str, tuple[float, ...]]]
    gradient: list[tuple[float, ...]] | None = None
    threshold: float | None = None
    value_range: tuple[float, float] = (0.0, 1.0)


def legend(mode: str, threshold: "float | FlagRule", table: pd.DataFrame | None = None, column: str = "gradcamo"
           ) -> Legend:
    """Legend entries for the colours of :func:`label_colors`, with counts when ``table`` is given."""
    rule = as_rule(threshold)
    counts = {"ok": None, "flagged": None, "not audited": None, "undefined": None}
    value_range = (0.0, 1.0)
    if table is not None and len(table):
        audited = table["status"] == results.STATUS_AUDITED
        counts["flagged"] = int(table["flagged"].sum())
        counts["ok"] = int((audited & ~table["flagged"]).sum())
        counts["not audited"] = int((~audited).sum())
        if column in table:
            score = table.loc[audited, column].to_numpy(dtype=float)
            counts["undefined"] = int((~np.isfinite(score)).sum())
            value_range = score_range(score)

    def n(key):
        return f" ({counts[key]})" if counts[key] is not None else ""

    if mode == "flag":
        return Legend(
            "Cells coloured by flag",
            [
                (f"looks at the cell: {column_title(rule.on)} ≥ {rule.threshold:.2f}{n('ok')}", COLOR_OK),
                (f"flagged: < {rule.threshold:.2f}, undefined, or by hand{n('flagged')}", COLOR_FLAGGED),
                (f"not audited{n('not audited')}", COLOR_NOT_AUDITED),
            ],
        )
    stops = [tuple(float(v) for v in c) for c in _score_rgba(np.linspace(0.0, 1.0, 11))]
    return Legend(
        f"Cells coloured by {column_title(column)} (lowest → highest seen)",
        [(f"undefined (NaN){n('undefined')}", COLOR_UNDEFINED), (f"not audited{n('not audited')}", COLOR_NOT_AUDITED)],
        stops,
        rule.threshold if rule.on == column else None,
        value_range,
    )


# --------------------------------------------------------------------------- CAM placement


def crop_world_translate(origin: Sequence[int], scale: Sequence[float], translate: Sequence[float]) -> np.ndarray:
    """World translate of a crop whose first voxel is image voxel ``origin`` of a layer (scale, translate)."""
    origin = np.asarray(origin, dtype=float)
    scale = np.asarray(scale, dtype=float)[-len(origin):]
    translate = np.asarray(translate, dtype=float)[-len(origin):]
    return origin * scale + translate


def cam_volume(cam) -> np.ndarray:
    """A cell's CAM on its crop grid (float32, ≥ 0)."""
    return np.asarray(cam.on_crop_grid(), dtype=np.float32)


def paste_cam(composite: np.ndarray, cam, normalise: bool = True) -> None:
    """Add one cell's CAM to an image-sized ``composite`` (voxel-wise maximum), clipped at the image border.

    With ``normalise`` each cell's map is divided by its own maximum, so every cell shows where *its*
    attention went whatever the model's gradient scale.
    """
    grid = cam_volume(cam)
    if normalise:
        peak = float(grid.max())
        grid = grid / peak if peak > 0 else grid
    src, dst = [], []
    for o, s, n in zip(cam.origin, grid.shape, composite.shape):
        start, stop = max(int(o), 0), min(int(o) + s, n)
        if stop <= start:
            return
        dst.append(slice(start, stop))
        src.append(slice(start - int(o), stop - int(o)))
    region = composite[tuple(dst)]
    np.maximum(region, grid[tuple(src)], out=region)


def composite_cam(shape: Sequence[int], cams: Iterable, normalise: bool = True) -> np.ndarray:
    """The 'all cells' map: every cell's CAM placed at its crop, voxel-wise maximum where crops overlap."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    for cam in cams:
        paste_cam(out, cam, normalise)
    return out


