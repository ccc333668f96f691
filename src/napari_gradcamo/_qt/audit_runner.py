"""Running the audit from the dock without blocking napari's main thread.

The worker computes the Grad-CAMs *and* pastes them into the all-cells map; the GUI thread only
queues finished batches (:meth:`AuditRunMixin._on_batch`), and a timer folds the queue into
``labels.features`` (table and colours) every :data:`REFRESH_MS` and redraws the all-cells layer every
:data:`MAP_REFRESH_S` (and once at the end). A mixin of
:class:`~napari_gradcamo._qt.audit_widget.AuditWidget`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt.panel import first_line
from napari_gradcamo._qt.pickers import guarded
from napari_gradcamo.audit import labels_features
from napari_gradcamo.io.images import ImageError

#: how often queued batches reach the table and colours while an audit runs (ms)
REFRESH_MS = 400
#: how often the all-cells map layer is redrawn while an audit runs (s); always at the end.
#: The label colours change only at the end: under software OpenGL a new labels colormap costs seconds.
MAP_REFRESH_S = 2.0


@dataclass
class AuditRun:
    """One audit in progress: where it writes, what it has done, and what waits to be shown."""

    labels: object  # the napari Labels layer
    image_layers: list
    total: int
    only: list[int] | None
    model_name: str
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    stopped: str = ""
    composite: np.ndarray | None = None
    queued_rows: list = field(default_factory=list)
    queued_cams: dict = field(default_factory=dict)
    map_shown_at: float = 0.0
    map_dirty: bool = False
    record: dict | None = None  # the run record (provenance), finished when the run ends


def _audit_job(image_layers, labels, bundle, settings, only, composite, cancel):
    """Worker body: stack the stains, audit, paste each cell's map into ``composite`` (all here, not in the
    GUI thread), and yield the batches."""
    from napari_gradcamo.audit.run import iter_audit
    from napari_gradcamo.io.images import check_labels_match
    from napari_gradcamo.progress import Cancelled

    image = L.image_from_layers(image_layers)
    check_labels_match(image, labels)
    try:
        for batch in iter_audit(image, labels, bundle, settings, only, cancel):
            if composite is not None:
                for cam in batch.cams.values():
                    labels_features.paste_cam(composite, cam)
            yield batch
            if cancel.cancelled:
                return "cancelled"
    except Cancelled:
        return "cancelled"
    return "done"


#: Where the labels layer keeps the run record of the audit that filled its features
RUN_RECORD_KEY = "gradcamo_run_record"


def _start_record(bundle, image_layers, labels_layer, settings, only) -> dict:
    from napari_gradcamo.audit import provenance

    return provenance.start_record(
        "audit", bundle.source or None, bundle.metadata.model_dump(), {"image": None, "masks": None},
        {"audit": settings, "only_labels": only, "napari_layers": {
            "image": [layer.name for layer in image_layers], "labels": labels_layer.name}})


class AuditRunMixin:
    """Start, follow, cancel and finish an audit for the dock."""

    def _selected_for_run(self) -> list[int]:
        if self._forced_selection:
            return list(self._forced_selection)
        chosen = self.table.selected_labels()
        if not chosen and self.labels_layer is not None:
            label = int(self.labels_layer.selected_label)
            if label > 0 and (self.features()["label"] == label).any():
                chosen = [label]
        return chosen

    def run(self, only_selected: bool = False) -> bool:
        """Start the audit on all cells (or the selected ones); False with the reason shown if it cannot start."""
        if self.panel.running:
            self.panel.say("An audit is already running; Cancel it first.", error=True)
            return False
        layer = self.labels_layer
        try:
            if self.bundle is None:
                raise ImageError("Load a model first (Checkpoint → a demo model or Open…).")
            if layer is None or layer not in self.viewer.layers:
                raise ImageError("Choose the Labels layer with the cell masks (or run 'Segment cells').")
            image_layers = self.picker.layers()
            if not image_layers:
                raise ImageError("No image layer is selected; tick the layers that hold the stains.")
            settings = self.model_panel.audit_settings(self.results.flag_rule())
            labels = np.array(L.labels_volume(layer), copy=True)
            only = self._selected_for_run() if only_selected else None
            if only_selected and not only:
                raise ImageError("No cell is selected: select rows in the table (or a label) first.")
        except ImageError as error:
            self.panel.end(str(error), error=True)
            return False
        cams = self.cams(layer)
        if only is None:
            cams.clear()
            self._composites.pop(layer, None)
            table = labels_features.restart(self.features(layer), labels, self.bundle.metadata.class_names,
                                            settings.threshold)
        else:
            for label in only:
                cams.pop(label, None)
            table = self.features(layer)
        self._set_features(layer, table)
        total = len(only) if only is not None else len(table)
        run = AuditRun(layer, self.picker.layers(), total, only, self.model_panel.model_name,
                       record=_start_record(self.bundle, image_layers, layer, settings, only))
        run.composite = self._composite(layer) if self.show_all.isChecked() else None
        self.run_state = run
        self._refresh_buttons(running=True)
        self._refresh_timer.start()
        self.panel.start(
            f"Grad-CAMO: {total} cell(s), {settings.method} at {settings.target_layer}…",
            _audit_job, image_layers, labels, self.bundle, settings, only, run.composite,
            on_yield=self._on_batch, on_return=self._on_run_return, on_error=self._on_run_error,
            on_finished=self._on_run_finished,
        )
        return True

    def cancel(self) -> None:
        """Stop after the current batch; finished rows stay in the table."""
        self.panel.cancel()

    @guarded
    def _on_batch(self, batch) -> None:
        """Queue a finished batch (cheap); :meth:`_flush_batches` shows it."""
        run = self.run_state
        if run is None:
            return
        run.done = batch.done
        run.queued_rows.append(batch.rows)
        run.queued_cams.update(batch.cams)
        run.map_dirty = run.map_dirty or bool(batch.cams)
        elapsed = time.perf_counter() - run.started
        self.panel.step(batch.done, batch.total, f"{batch.done}/{batch.total} cells · {elapsed:.1f} s")

    @guarded
    def _flush_batches(self, final: bool = False) -> None:
        """Fold the queued batches into ``labels.features`` once, and redraw the all-cells map now and then."""
        run = self.run_state
        if run is None:
            return
        layer = run.labels
        if layer not in self.viewer.layers:
            run.queued_rows.clear()
            return
        if run.queued_rows:
            rows = pd.concat(run.queued_rows, ignore_index=True)
            rows[labels_features.MODEL] = run.model_name
            run.queued_rows.clear()
            self.cams(layer).update(run.queued_cams)
            run.queued_cams = {}
            self._set_features(layer, labels_features.merge_rows(self.features(layer), rows, self.results.flag_rule()))
        now = time.perf_counter()
        if run.composite is None or not run.map_dirty or not self.show_all.isChecked():
            return
        # while running, only redraw a map layer that exists (cheap); creating it (seconds under software
        # OpenGL) waits for the end of the run
        if final or (self.cam_layers.all_layer() is not None and now - run.map_shown_at >= MAP_REFRESH_S):
            run.map_dirty, run.map_shown_at = False, now
            self.cam_layers.show_all(layer, run.composite)

    def _close_record(self, run: AuditRun, completed: bool) -> None:
        """Finish the run's record and keep it with the labels layer (save and export write it)."""
        from napari_gradcamo.audit import provenance

        if run.record is not None and run.done:
            run.labels.metadata[RUN_RECORD_KEY] = provenance.finish_record(
                run.record, completed, cells_done=run.done, cells_total=run.total)
            self.unsaved = True

    @guarded
    def _on_run_return(self, outcome) -> None:
        run = self.run_state
        self._flush_batches(final=True)
        if run is None:
            return
        self._close_record(run, completed=not (run.stopped or outcome == "cancelled" or self.panel.cancelled))
        elapsed = time.perf_counter() - run.started
        if run.stopped:
            self.panel.end(run.stopped, error=True)
            return
        if outcome == "cancelled" or self.panel.cancelled:
            self.panel.end(f"Cancelled: {run.done} of {run.total} cells audited in {elapsed:.1f} s; their rows are kept.")
            return
        self.timings["audit_s"] = elapsed
        self.timings["cells"] = run.done
        per_cell = elapsed / run.done if run.done else float("nan")
        flagged = int(self.features()["flagged"].sum()) if self.labels_layer is not None else 0
        self.panel.step(run.done, max(run.total, 1))
        self.panel.end(f"Audited {run.done} cells in {elapsed:.1f} s ({per_cell:.2f} s/cell); {flagged} flagged.")

    @guarded
    def _on_run_error(self, error) -> None:
        from napari_gradcamo.progress import Cancelled

        if isinstance(error, Cancelled):
            self._on_run_return("cancelled")
            return
        self._flush_batches(final=True)
        run = self.run_state
        if run is not None:
            self._close_record(run, completed=False)
        if run is not None and run.stopped:
            self.panel.end(run.stopped, error=True)
            return
        self.panel.end(f"The audit failed: {first_line(error)}", error=True)

    @guarded
    def _on_run_finished(self) -> None:
        self._refresh_timer.stop()
        self._flush_batches(final=True)
        self.run_state = None
        self._refresh_view()  # the label colours, held back while the run went on
        self._refresh_buttons(running=False)
        if self._pending and self.labels_layer is not None:
            pending, self._pending = sorted(self._pending), set()
            present = set(self.features()["label"])
            pending = [p for p in pending if p in present]
            if pending and self.bundle is not None:
                self._recompute(pending)

    @guarded
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        run = self.run_state
        if run is not None and self.panel.running and (layer is run.labels or layer in run.image_layers):
            kind = "labels" if layer is run.labels else "image"
            kept = "" if kind == "labels" else f" The {run.done} cells finished so far keep their rows."
            run.stopped = f"The {kind} layer '{layer.name}' was deleted during the audit, so the audit was stopped.{kept}"
            self.cancel()
            self.panel.say(run.stopped, error=True)
        if layer is self.labels_layer:
            self._let_go(layer)
            self.labels_layer = None
            self.watcher.watch(None)
            self._on_labels_changed(self.labels_picker.layer())


_PREWARMED = False


def prewarm_cam_library() -> None:
    """Import pytorch-grad-cam (and torchvision, ~10 s on a slow CPU) in the background after a model
    is loaded, so pressing Run does not wait for it."""
    global _PREWARMED
    if _PREWARMED:
        return
    _PREWARMED = True
    import importlib
    import threading

    def load() -> None:
        try:
            importlib.import_module("pytorch_grad_cam")
        except Exception:  # the run reports import problems itself
            pass

    threading.Thread(target=load, name="gradcamo-prewarm", daemon=True).start()
