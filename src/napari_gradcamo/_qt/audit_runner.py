"""Running the audit from the dock without blocking napari's main thread.

The worker does everything that touches the whole volume: it copies the masks, stacks the stains, builds
the run's fresh table (every cell 'not audited'), computes the Grad-CAMs, pastes them into the all-cells
map and brings the rows to the table's schema. The GUI thread only queues what the worker yields
(:meth:`AuditRunMixin._on_batch`); a timer then does at most **one** view update per tick
(:meth:`AuditRunMixin._refresh_tick`), the one most overdue: the queued rows into ``labels.features`` and
the table (every :data:`TABLE_REFRESH_S`), the all-cells map redrawn in place (every :data:`MAP_REFRESH_S`),
the label colours (every :data:`COLOUR_REFRESH_S`). The end of a run does its last updates one per
event-loop turn. Under software OpenGL each update costs tens of milliseconds at 21×1080×1080 and the
canvas redraw after it about 95 ms, so no turn holds the main thread long (``benchmarks/gui_stall.py``
measures it). A mixin of :class:`~napari_gradcamo._qt.audit_widget.AuditWidget`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt.panel import first_line
from napari_gradcamo._qt.pickers import guarded
from napari_gradcamo._qt.workers import one_core_for_the_viewer
from napari_gradcamo.audit import labels_features
from napari_gradcamo.io.images import ImageError

#: how often the refresh timer looks for a due view update while an audit runs (ms)
TICK_MS = 100
#: how often queued rows reach ``labels.features`` and the table (s)
TABLE_REFRESH_S = 0.5
#: how often the all-cells map layer is redrawn (s); always at the end
MAP_REFRESH_S = 2.0
#: how often the cells are recoloured (s); always at the end. napari remaps every displayed voxel of a
#: uint32 label image on a new colormap (≈ 50 ms for a 1080×1080 plane here), then redraws
COLOUR_REFRESH_S = 3.0
#: how often the progress bar and status line follow the batches (s): each update repaints the dock at once
PROGRESS_REFRESH_S = 0.25


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
    table_shown_at: float = 0.0
    progress_shown_at: float = 0.0
    map_shown_at: float = 0.0
    map_dirty: bool = False
    colours_shown_at: float = 0.0
    colours_dirty: bool = False
    record: dict | None = None  # the run record (provenance), finished when the run ends


@dataclass
class FreshTable:
    """The worker's first yield for a run over all cells: every cell 'not audited', hand flags kept
    (0 of ``total`` cells done)."""

    table: pd.DataFrame
    done: int = 0
    total: int = 0


def _audit_job(image_layers, labels, bundle, settings, only, composite, hand_flags, rule, model_name, cancel):
    """Worker body: copy the masks (``labels``: the layer's array) and stack the stains; for a run over all
    cells (``only`` None) clear ``composite`` and yield the fresh table (``hand_flags``: the old table's
    ``label`` and ``flag_override``); audit, paste each cell's map into ``composite``, bring each batch's
    rows to the table's schema, and yield the batches."""
    from dataclasses import replace

    from napari_gradcamo.audit.run import iter_audit
    from napari_gradcamo.crops.extract import cell_table
    from napari_gradcamo.io.images import check_labels_match
    from napari_gradcamo.progress import Cancelled

    labels = np.array(labels, copy=True)  # the audit's own masks: edits during the run are handled after it
    image = L.image_from_layers(image_layers)
    check_labels_match(image, labels)
    cells = cell_table(labels)  # once: for the fresh table and for the audit
    if only is None:
        if composite is not None:
            composite.fill(0.0)
        fresh = labels_features.restart(hand_flags, labels, bundle.metadata.class_names, rule, cells)
        yield FreshTable(fresh, 0, len(fresh))
    try:
        with one_core_for_the_viewer():
            for batch in iter_audit(image, labels, bundle, settings, only, cancel, cells):
                if composite is not None:
                    for cam in batch.cams.values():
                        labels_features.paste_cam(composite, cam)
                rows = labels_features.ensure_schema(batch.rows, bundle.metadata.class_names)
                rows[labels_features.MODEL] = model_name
                yield replace(batch, rows=rows)
                if cancel.cancelled:
                    return "cancelled"
    except Cancelled:
        return "cancelled"
    return "done"


#: Where the labels layer keeps the run record of the audit that filled its features
RUN_RECORD_KEY = "gradcamo_run_record"


def _start_record(bundle, image_layers, labels_layer, settings, only) -> dict:
    from napari_gradcamo.output import provenance

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
        if self.busy:
            self.panel.say("An audit is already running; Cancel it first.", error=True)
            return False
        layer = self.labels_layer
        try:
            if self.model_panel.loading:
                raise ImageError("A model is loading; run when it has loaded.")
            if self.bundle is None:
                raise ImageError("Load a model first (Checkpoint → a demo model or Open…).")
            if layer is None or layer not in self.viewer.layers:
                raise ImageError("Choose the Labels layer with the cell masks (or run 'Segment cells').")
            image_layers = self.picker.layers()
            if not image_layers:
                raise ImageError("No image layer is selected; tick the layers that hold the stains.")
            rule = self.results.flag_rule()
            settings = self.model_panel.audit_settings(rule)
            labels = L.labels_volume(layer)  # copied by the worker
            only = self._selected_for_run() if only_selected else None
            if only_selected and not only:
                raise ImageError("No cell is selected: select rows in the table (or a label) first.")
        except ImageError as error:
            self.panel.end(str(error), error=True)
            return False
        cams = self.cams(layer)
        table = self.features(layer)
        if only is None:
            cams.clear()  # the worker clears the map and sends the fresh table
            hand_flags = table[["label", labels_features.OVERRIDE]].copy()
        else:
            for label in only:
                cams.pop(label, None)
            hand_flags = None
        total = len(only) if only is not None else len(table)
        run = AuditRun(layer, image_layers, total, only, self.model_panel.model_name,
                       record=_start_record(self.bundle, image_layers, layer, settings, only))
        run.composite = self._composite(layer) if self.show_all.isChecked() else None
        self.run_state = run
        self._refresh_buttons(running=True)
        self._refresh_timer.start()
        self.panel.start(
            f"Grad-CAMO: {total} cell(s), {settings.method} at {settings.target_layer}…",
            _audit_job, image_layers, labels, self.bundle, settings, only, run.composite, hand_flags, rule,
            run.model_name,
            on_yield=self._on_batch, on_return=self._on_run_return, on_error=self._on_run_error,
            on_finished=self._on_run_finished,
        )
        return True

    @property
    def busy(self) -> bool:
        """An audit runs, or its last view updates wait for their turn."""
        return self.panel.running or self.run_state is not None or bool(self._view_steps)

    def cancel(self) -> None:
        """Stop after the current batch; finished rows stay in the table."""
        self.panel.cancel()

    @guarded
    def _on_batch(self, batch) -> None:
        """Queue what the worker yielded (cheap); :meth:`_refresh_tick` shows it."""
        run = self.run_state
        if run is None:
            return
        if isinstance(batch, FreshTable):
            self._set_features(run.labels, batch.table)
            run.colours_dirty = True
            self.panel.step(0, batch.total, f"0/{batch.total} cells…")
            return
        run.done = batch.done
        run.queued_rows.append(batch.rows)
        run.queued_cams.update(batch.cams)
        run.map_dirty = run.map_dirty or bool(batch.cams)
        now = time.perf_counter()
        if now - run.progress_shown_at >= PROGRESS_REFRESH_S or batch.done >= batch.total:
            run.progress_shown_at = now
            self.panel.step(batch.done, batch.total, f"{batch.done}/{batch.total} cells · {now - run.started:.1f} s")

    @guarded
    def _refresh_tick(self) -> None:
        """Do the one view update that is most overdue (none when nothing changed). In 3D view the map and
        the colours wait for the end: there each costs a second of rendering the whole volume."""
        run = self.run_state
        if run is None or run.labels not in self.viewer.layers:
            return
        now = time.perf_counter()
        flat = self.viewer.dims.ndisplay == 2
        waiting = [(run.queued_rows, run.table_shown_at + TABLE_REFRESH_S, self._show_rows),
                   (run.map_dirty and flat, run.map_shown_at + MAP_REFRESH_S, self._show_map),
                   (run.colours_dirty and flat, run.colours_shown_at + COLOUR_REFRESH_S, self._show_colours)]
        due = [(now - at, show) for pending, at, show in waiting if pending and now >= at]
        if due:
            max(due, key=lambda d: d[0])[1](run)

    def _show_rows(self, run: AuditRun) -> None:
        """Fold the queued batches into ``labels.features`` (the table follows; colours wait their turn)."""
        run.table_shown_at = time.perf_counter()
        if not run.queued_rows or run.labels not in self.viewer.layers:
            run.queued_rows.clear()
            return
        rows = pd.concat(run.queued_rows, ignore_index=True)
        run.queued_rows.clear()
        self.cams(run.labels).update(run.queued_cams)
        run.queued_cams = {}
        self._set_features(run.labels, labels_features.merge_rows(self.features(run.labels), rows,
                                                                  self.results.flag_rule()))
        run.colours_dirty = True

    def _show_map(self, run: AuditRun) -> None:
        """Redraw the all-cells map in place (a layer that does not exist yet is made at the end: seconds)."""
        run.map_shown_at = time.perf_counter()
        if run.composite is None or not self.show_all.isChecked() or run.labels not in self.viewer.layers:
            return
        if self.run_state is run and self.cam_layers.all_layer() is None:
            return
        run.map_dirty = False
        self.cam_layers.show_all(run.labels, run.composite)

    def _show_colours(self, run: AuditRun) -> None:
        run.colours_shown_at = time.perf_counter()
        run.colours_dirty = False
        if run.labels is self.labels_layer:
            self._refresh_colours()

    def _close_record(self, run: AuditRun, completed: bool) -> None:
        """Finish the run's record and keep it with the labels layer (save and export write it)."""
        from napari_gradcamo.output import provenance

        if run.record is not None and run.done:
            run.labels.metadata[RUN_RECORD_KEY] = provenance.finish_record(
                run.record, completed, cells_done=run.done, cells_total=run.total)
            self.unsaved = True

    def _final_message(self, run: AuditRun, outcome) -> tuple[str, bool]:
        elapsed = time.perf_counter() - run.started
        if run.stopped:
            return run.stopped, True
        if outcome == "cancelled" or self.panel.cancelled:
            return f"Cancelled: {run.done} of {run.total} cells audited in {elapsed:.1f} s; their rows are kept.", False
        self.timings["audit_s"] = elapsed
        self.timings["cells"] = run.done
        per_cell = elapsed / run.done if run.done else float("nan")
        flagged = int(self.features()["flagged"].sum()) if self.labels_layer is not None else 0
        self.panel.step(run.done, max(run.total, 1))
        return f"Audited {run.done} cells in {elapsed:.1f} s ({per_cell:.2f} s/cell); {flagged} flagged.", False

    @guarded
    def _on_run_return(self, outcome) -> None:
        run = self.run_state
        if run is None:
            return
        self._show_rows(run)
        self._close_record(run, completed=not (run.stopped or outcome == "cancelled" or self.panel.cancelled))
        self.panel.end(*self._final_message(run, outcome))

    @guarded
    def _on_run_error(self, error) -> None:
        from napari_gradcamo.progress import Cancelled

        if isinstance(error, Cancelled):
            self._on_run_return("cancelled")
            return
        run = self.run_state
        if run is not None:
            self._show_rows(run)
            self._close_record(run, completed=False)
        self.panel.end((run and run.stopped) or f"The audit failed: {first_line(error)}", error=True)

    @guarded
    def _on_run_finished(self) -> None:
        """The worker ended: the map and the colours follow, each in an event-loop turn of its own."""
        self._refresh_timer.stop()
        run, self.run_state = self.run_state, None
        if run is not None:  # its last rows were folded in by _on_run_return / _on_run_error
            self._in_turns(lambda: self._show_map(run) if run.map_dirty else None,
                          self._refresh_colours, self._after_run)
        else:
            self._after_run()

    def _after_run(self) -> None:
        self._refresh_buttons(running=False)
        if self._pending and self.labels_layer is not None:
            pending, self._pending = sorted(self._pending), set()
            present = set(self.features()["label"])
            pending = [p for p in pending if p in present]
            if pending and self.bundle is not None:
                self._recompute(pending)

    def _in_turns(self, *steps) -> None:
        """Run each step in an event-loop turn of its own (at once, in order, when jobs run synchronously)."""
        self._view_steps.extend(steps)
        if self.synchronous:
            while self._view_steps:
                self._view_steps.pop(0)()
        elif len(self._view_steps) == len(steps):
            QTimer.singleShot(0, self._next_view_step)

    @guarded
    def _next_view_step(self) -> None:
        if not self._view_steps:
            return
        step = self._view_steps.pop(0)
        try:
            step()
        finally:
            if self._view_steps:
                QTimer.singleShot(0, self._next_view_step)

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
    """Import torch, safetensors' torch API and pytorch-grad-cam (with torchvision: 5–6 s here) in the
    background when the dock opens, so neither loading a model (which imported torch on the main thread:
    2.5–4.5 s frozen) nor pressing Run waits for them. Imports hold the GIL in stretches, so the viewer
    still hitches while they run, but it is not frozen."""
    global _PREWARMED
    if _PREWARMED:
        return
    _PREWARMED = True
    import importlib
    import threading

    def load() -> None:
        for module in ("torch", "safetensors.torch", "pytorch_grad_cam"):
            try:
                importlib.import_module(module)
            except Exception:  # loading a model or running reports import problems itself
                return

    threading.Thread(target=load, name="gradcamo-prewarm", daemon=True).start()
