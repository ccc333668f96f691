"""One labels layer's audit state, without Qt: cached maps, the all-cells map, the flag rule, deleted rows
kept for undo, cells waiting to be recomputed, and what a mask edit or a new rule does to the table.

The per-cell table itself is not kept here: ``labels.features`` (napari's, or any DataFrame the caller
holds) stays the one source of truth per cell. Every method that changes rows takes the current table and
returns the new one (the functions of :mod:`napari_gradcamo.audit.labels_features` do the work), so the
audit dock only hands tables between napari and this object, and the same session runs in scripts and
tests with no viewer.

Examples
--------
>>> import numpy as np
>>> from napari_gradcamo.audit.session import AuditSession
>>> labels = np.zeros((2, 8, 8), np.uint32); labels[:, 2:5, 2:5] = 1
>>> session = AuditSession()
>>> table = session.fresh_table(labels)
>>> list(table["status"])
['not audited']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit.labels_features import EditMeasure, EditOutcome, FlagRule


@dataclass
class AuditSession:
    """The audit state of one label image (see the module docstring)."""

    rule: FlagRule = field(default_factory=lambda: FlagRule(0.0, "normalised"))
    class_names: Sequence[str] = ()
    #: label -> :class:`~napari_gradcamo.audit.run.CellCam`: each audited cell's raw map and crop
    cams: dict = field(default_factory=dict)
    #: label -> (row, CellCam or None) of cells an edit removed: an undo that brings a label back restores them
    deleted: dict = field(default_factory=dict)
    #: labels whose crop moved under an edit made while a run went on: recompute them when it ends
    pending: set = field(default_factory=set)
    _composite: np.ndarray | None = None

    # ------------------------------------------------------------------ rows
    def fresh_table(self, labels: np.ndarray, keep: pd.DataFrame | None = None) -> pd.DataFrame:
        """One 'not audited' row per label (keeping the rows and other tools' columns of ``keep``)."""
        return labels_features.init_features(labels, keep, list(self.class_names), self.rule)

    def set_rule(self, table: pd.DataFrame, on: str, threshold: float) -> pd.DataFrame:
        """Flag cells whose score ``on`` is below ``threshold`` (or undefined; hand flags kept); the new table."""
        from napari_gradcamo.audit.scoring import SCORE_KINDS

        if on not in SCORE_KINDS:
            raise ValueError(f"unknown score {on!r}; choose one of {sorted(SCORE_KINDS)}")
        if not np.isfinite(float(threshold)):
            raise ValueError(f"the threshold must be a finite number, got {threshold!r}")
        self.rule = FlagRule(float(threshold), on)
        return labels_features.reflag(table, self.rule)

    def rule_record(self) -> dict:
        """The rule as saved with an audit (``results.json``'s ``flag_rule``)."""
        return {"on": self.rule.on, "threshold": float(self.rule.threshold)}

    def merge(self, table: pd.DataFrame, rows: pd.DataFrame, cams: Mapping | None = None) -> pd.DataFrame:
        """Fold an audit batch's ``rows`` (and their maps) into ``table``; the new table."""
        if cams:
            self.add_maps(cams)
        return labels_features.merge_rows(table, rows, self.rule)

    def toggle_flag(self, table: pd.DataFrame, label: int) -> pd.DataFrame:
        return labels_features.toggle_flag(table, label, self.rule)

    def set_override(self, table: pd.DataFrame, labels: Iterable[int], value: str) -> pd.DataFrame:
        return labels_features.set_override(table, labels, value, self.rule)

    # ------------------------------------------------------------------ maps
    def add_maps(self, cams: Mapping) -> None:
        """Keep these cells' maps (``{label: CellCam}``); the all-cells map is rebuilt when next asked for."""
        self.cams.update(cams)
        self._composite = None

    def forget_maps(self, labels: Iterable[int] | None = None) -> None:
        """Drop the maps of ``labels`` (all when None)."""
        if labels is None:
            self.cams.clear()
        else:
            for label in labels:
                self.cams.pop(int(label), None)
        self._composite = None

    def composite(self, shape: Sequence[int]) -> np.ndarray:
        """The all-cells map (each cell's map scaled to its maximum, voxel-wise maximum), cached."""
        shape = tuple(int(s) for s in shape)
        if self._composite is None or self._composite.shape != shape:
            self._composite = labels_features.composite_cam(shape, self.cams.values())
        return self._composite

    def keep_composite(self, composite: np.ndarray) -> None:
        """Use ``composite`` (painted by a run's worker) as the all-cells map."""
        self._composite = composite

    # ------------------------------------------------------------------ edits
    def edit_maps(self, touched: Iterable[int]) -> dict:
        """``{label: CellCam}`` for the ``touched`` labels that have one (cached, or kept for a deleted cell):
        what :func:`~napari_gradcamo.audit.labels_features.measure_edit` needs, as a copy a worker may read."""
        out = {}
        for label in touched:
            label = int(label)
            cam = self.cams.get(label)
            if cam is None and label in self.deleted:
                cam = self.deleted[label][1] if len(self.deleted[label]) > 1 else None
            if cam is not None:
                out[label] = cam
        return out

    def apply_edit(self, table: pd.DataFrame, labels: np.ndarray, touched: Iterable[int],
                   measured: EditMeasure | None = None) -> EditOutcome:
        """Update ``table`` after the ``touched`` labels were painted, erased or filled: rescore with cached
        maps, remove deleted cells (keeping their rows and maps for an undo), restore cells an undo brought
        back, and note moved crops in :attr:`pending`. Returns the outcome; its ``table`` is the new one.
        ``measured``: :func:`~napari_gradcamo.audit.labels_features.measure_edit` of the same edit, made
        before (in a worker), so that this only updates rows and maps."""
        outcome = labels_features.apply_mask_edit(table, labels, touched, self.cams, self.rule, self.deleted,
                                                  measured)
        for label, row in outcome.removed_rows.items():
            self.deleted[label] = (row, self.cams.get(label))
        changed = bool(outcome.removed or outcome.moved or outcome.restored)
        for label in outcome.removed + outcome.moved:
            self.cams.pop(label, None)
        for label in outcome.restored:
            cam = self.deleted.pop(label, (None, None))[1]
            if cam is not None and label not in outcome.moved:
                self.cams[label] = cam
        self.pending.update(outcome.moved)
        if changed:
            self._composite = None
        return outcome

    def take_pending(self, present: Iterable[int]) -> list[int]:
        """The labels waiting to be recomputed that still exist, sorted; the wait list is emptied."""
        present = set(int(p) for p in present)
        pending, self.pending = sorted(self.pending), set()
        return [p for p in pending if p in present]

    def reset(self) -> None:
        """The label image was replaced: nothing cached refers to it any more."""
        self.cams.clear()
        self.deleted.clear()
        self.pending.clear()
        self._composite = None
