"""The audit dock's interactions after a run: select a cell, flag, edit masks, delete cells, export.

A mixin of :class:`~napari_gradcamo._qt.audit_widget.AuditWidget` (kept apart so neither file grows
past a screenful of concerns); it uses the widget's ``viewer``, ``labels_layer``, ``results``,
``panel``, ``cam_layers``, ``features()``, ``cams()`` and ``_set_features``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt.audit_runner import RUN_RECORD_KEY
from napari_gradcamo._qt.pickers import guarded
from napari_gradcamo._results_io import FLAG_RULE_KEY
from napari_gradcamo.audit import labels_features
from napari_gradcamo.io.images import ImageError
from napari_gradcamo.output import results


class AuditEditsMixin:
    """Selection, flags, mask edits and export for the audit dock."""

    # ------------------------------------------------------------------ selection
    def select_label(self, label: int, center: bool = True) -> None:
        """Select a cell: its row, the layer's selected label, the camera, its Grad-CAM and outline."""
        layer = self.labels_layer
        if layer is None or self._selecting:
            return
        self._selecting = True
        try:
            label = int(label)
            self.table.select_label(label)
            layer.selected_label = label
            self._last_selected = label
            row = labels_features.row_of(self.features(layer), label)
            if row is not None and center:
                diameter = L.cell_diameter(row["volume_voxels"], 3 if L.labels_volume(layer).shape[0] > 1 else 2)
                L.focus_on(self.viewer, layer, (row["centroid_z"], row["centroid_y"], row["centroid_x"]),
                           diameter=diameter)
            self._show_cell_cam(layer, label)
        finally:
            self._selecting = False

    def _show_cell_cam(self, layer, label: int) -> None:
        cam = self.cams(layer).get(label)
        if cam is not None:
            self.cam_layers.show_cell(layer, cam, label)
            return
        self.cam_layers.hide(all_cells=False)
        row = labels_features.row_of(self.features(layer), label)
        if row is not None and row["status"] == results.STATUS_AUDITED:
            self.panel.say(f"Cell {label} was audited before this session: its Grad-CAM is not in memory "
                           "('Run on selected' recomputes it).")
        else:
            self.panel.say(f"Cell {label} has no Grad-CAM yet (not audited).")

    @guarded
    def _on_canvas_click(self, layer, event):
        """A click on a cell (pan/zoom or pick mode, 2D or 3D) selects its row."""
        if event.type != "mouse_press" or str(layer.mode) not in ("pan_zoom", "pick", "transform"):
            return
        value = layer.get_value(
            event.position, view_direction=event.view_direction, dims_displayed=event.dims_displayed, world=True
        )
        if isinstance(value, tuple):  # multiscale: (level, value)
            value = value[-1]
        if value is None or int(value) <= 0:
            return
        self.select_label(int(value), center=False)

    @guarded
    def _on_selected_label(self, event=None) -> None:
        layer = self.labels_layer
        if layer is None or self._selecting:
            return
        label = int(layer.selected_label)
        # napari re-emits selected_label on every colormap change: act only when it really changed
        if label == self._last_selected:
            return
        self._last_selected = label
        if label > 0 and (self.features(layer)["label"] == label).any():
            self._selecting = True
            try:
                self.table.select_label(label)
                self._show_cell_cam(layer, label)
            finally:
                self._selecting = False

    # ------------------------------------------------------------------ flags
    def set_threshold(self, value: float) -> None:
        if abs(self.threshold.value() - value) > 1e-9:
            self.threshold.setValue(value)  # comes back here through valueChanged
            return
        if self.labels_layer is not None:
            rule = self.results.flag_rule()
            # kept with the layer: saving writes it, reopening shows the same verdict
            self.labels_layer.metadata[FLAG_RULE_KEY] = {"on": rule.on, "threshold": rule.threshold}
            self._set_features(self.labels_layer, labels_features.reflag(self.features(), rule))

    def set_flag_rule(self, on: str, threshold: float) -> None:
        """Flag cells whose score ``on`` ('gradcamo', 'normalised', 'lift') is below ``threshold``."""
        flag_on = self.results.flag_on
        index = flag_on.findData(on)
        if index < 0:
            raise ValueError(f"unknown score {on!r}; choose one of {list(self.results.RANGES)}")
        flag_on.setCurrentIndex(index)  # reflags with the current threshold, brought into the score's range
        self.set_threshold(float(threshold))

    def _on_flag_toggled(self, label: int) -> None:
        if self.labels_layer is not None:
            self._set_features(self.labels_layer,
                               labels_features.toggle_flag(self.features(), label, self.results.flag_rule()))

    def _flag_selected(self) -> None:
        chosen = self.table.selected_labels()
        if not chosen or self.labels_layer is None:
            self.panel.say("Select rows in the table to flag or unflag them.")
            return
        table = self.features()
        flagged = table.set_index("label").loc[chosen, "flagged"]
        value = labels_features.OVERRIDE_UNFLAGGED if bool(flagged.all()) else labels_features.OVERRIDE_FLAGGED
        self._set_features(self.labels_layer,
                           labels_features.set_override(table, chosen, value, self.results.flag_rule()))

    # ------------------------------------------------------------------ mask edits
    # The heavy part of an edit (finding a cell's voxels, measuring and rescoring edited cells, repainting the
    # all-cells map: scans of the whole label image) runs in a worker; the GUI thread only erases the found
    # voxels (napari records the undo step) and swaps in the new rows and map. Edits made while one is being
    # measured wait and are measured together next, so rows are always updated in the order of the edits.

    @property
    def editing(self) -> bool:
        """A delete search, an edit's measurement or an all-cells map repaint runs or waits."""
        return any(job is not None and job.running for job in (self._delete_job, self._edit_job, self._map_job)) \
            or bool(self._edit_queue)

    def delete_selected_cells(self) -> bool:
        """Erase the selected cells in every slice (one undo step each); their rows go with them. The voxels
        are found in a worker; True when the deletion started (when jobs run synchronously: when it is done)."""
        from napari_gradcamo._qt.workers import start_job

        layer = self.labels_layer
        chosen = self.table.selected_labels() or ([int(layer.selected_label)] if layer is not None else [])
        chosen = [c for c in chosen if c > 0]
        if layer is None or not chosen:
            self.panel.say("Select the cells to delete in the table (or pick a label) first.")
            return False
        if self._delete_job is not None and self._delete_job.running:
            self.panel.say("A deletion is still being prepared; try again in a moment.")
            return False
        self.panel.say(f"Deleting {len(chosen)} cell(s)…")
        self._delete_job = start_job(
            _find_cells_job, np.asarray(L.level0(layer.data)), chosen, synchronous=self.synchronous,
            on_return=lambda found: self._erase_found(layer, found),
            on_error=lambda error: self._on_edit_error(error),
        )
        return True

    @guarded
    def _erase_found(self, layer, found) -> None:
        """Erase the voxels the worker found (GUI thread): napari records each cell as one undo step."""
        voxels, self.last_delete_thread = found
        if layer is not self.labels_layer or layer not in self.viewer.layers:
            return
        data = np.asarray(L.level0(layer.data))
        for label, where in voxels.items():
            still = data[where] == label  # an edit made while the worker searched: leave other labels alone
            where = tuple(w[still] for w in where)
            if where[0].size:
                layer.data_setitem(where, 0)  # recorded for undo, reported by events.paint
        self.cam_layers.hide(all_cells=False)

    @guarded
    def _apply_edit(self, layer, touched) -> None:
        """Measure the ``touched`` labels in a worker, then update their rows (:meth:`_commit_edit`)."""
        if layer is None or layer is not self.labels_layer or not touched:
            return
        self._edit_queue.update(int(t) for t in touched)
        if self._edit_job is None or not self._edit_job.running:
            self._measure_next()

    def _measure_next(self) -> None:
        from napari_gradcamo._qt.workers import start_job

        layer = self.labels_layer
        if layer is None or not self._edit_queue:
            self._edit_queue.clear()
            return
        touched, self._edit_queue = sorted(self._edit_queue), set()
        generation = self._edit_generation
        self._edit_job = start_job(
            _measure_job, L.labels_volume(layer), touched, self.session(layer).edit_maps(touched),
            synchronous=self.synchronous,
            on_return=lambda measured: self._commit_edit(layer, touched, measured, generation),
            on_error=lambda error: self._on_edit_error(error),
            on_finished=self._after_measure,
        )

    @guarded
    def _after_measure(self) -> None:
        if self._edit_queue:
            self._measure_next()

    @guarded
    def _on_edit_error(self, error) -> None:
        from napari_gradcamo._qt.panel import first_line

        self.panel.say(f"Mask edit: the rows could not be updated ({first_line(error)}); 'Re-check masks' "
                       "tries again.", error=True)

    @guarded
    def _commit_edit(self, layer, touched, measured, generation: int) -> None:
        """Swap the measured edit into the rows (GUI thread: row updates only)."""
        if (layer is not self.labels_layer or layer not in self.viewer.layers
                or generation != self._edit_generation or measured is None):
            return
        self.last_edit_thread = measured.thread
        session = self.session(layer)
        session.rule = self.results.flag_rule()
        outcome = session.apply_edit(self.features(layer), L.labels_volume(layer), touched, measured)
        session.pending.clear()  # the dock recomputes moved crops itself (below, or after a run)
        if (outcome.removed or outcome.moved or outcome.restored) and self.all_cells_layer() is not None:
            self._repaint_map(layer)
        self._set_features(layer, outcome.table)
        self.unsaved = self.unsaved or bool(self.cams(layer))  # edits to an audited layer are unsaved work
        notes = []
        if outcome.rescored:
            notes.append(f"rescored {', '.join(map(str, outcome.rescored))} with the cached Grad-CAM")
        if outcome.restored:
            notes.append(f"label(s) {', '.join(map(str, outcome.restored))} back with their earlier results")
        if outcome.added:
            notes.append(f"new label(s) {', '.join(map(str, outcome.added))}: not audited")
        if outcome.removed:
            notes.append(f"deleted label(s) {', '.join(map(str, outcome.removed))}: rows removed")
        if outcome.moved:
            notes.append(f"crop moved for {', '.join(map(str, outcome.moved))}: recomputing its Grad-CAM")
        if notes:
            self.panel.say("Mask edit: " + "; ".join(notes) + ".")
        if outcome.moved and self.bundle is not None:
            self._pending.update(outcome.moved)
            if not self.busy:
                pending, self._pending = sorted(self._pending), set()
                self._recompute(pending)

    def _repaint_map(self, layer) -> None:
        """Rebuild the all-cells map from the session's maps in a worker and show it when it is done (again,
        when the maps changed meanwhile)."""
        from napari_gradcamo._qt.workers import start_job

        if self._map_job is not None and self._map_job.running:
            self._map_again = True
            return
        self._map_again = False
        maps = dict(self.session(layer).cams)
        shape = L.labels_volume(layer).shape
        self._map_job = start_job(
            _composite_job, shape, maps, synchronous=self.synchronous,
            on_return=lambda composite: self._show_repainted(layer, maps, composite),
            on_error=lambda error: self._on_edit_error(error),
            on_finished=lambda: self._map_again and layer is self.labels_layer and self._repaint_map(layer),
        )

    @guarded
    def _show_repainted(self, layer, maps, composite) -> None:
        if layer is not self.labels_layer or layer not in self.viewer.layers or composite is None:
            return
        session = self.session(layer)
        current = session.cams
        if len(current) != len(maps) or any(current.get(k) is not v for k, v in maps.items()):
            self._map_again = True  # maps changed while it was painted: paint again
            return
        session.keep_composite(composite)
        self._show_composite(layer)

    def recheck_masks(self) -> None:
        """Compare the label image with the table and update every row whose mask changed."""
        layer = self.labels_layer
        if layer is None:
            return
        from napari_gradcamo.crops.extract import cell_table

        current = {c.label: c for c in cell_table(L.labels_volume(layer))}
        known = self.features(layer).set_index("label")
        touched = set(known.index) ^ set(current)
        for label, cell in current.items():
            if label in known.index:
                row = known.loc[label]
                if int(row["volume_voxels"]) != cell.volume or not np.allclose(
                    [row["centroid_z"], row["centroid_y"], row["centroid_x"]], cell.centroid
                ):
                    touched.add(label)
        self._apply_edit(layer, touched)
        if not touched:
            self.panel.say("Masks and table agree; nothing to update.")

    @guarded
    def _on_data_replaced(self, layer) -> None:
        if layer is not self.labels_layer:
            return
        self._edit_generation += 1  # an edit measured on the old image is not applied
        self._edit_queue.clear()
        self.session(layer).reset()
        self.cam_layers.hide()
        names = self.bundle.metadata.class_names if self.bundle is not None else []
        self._set_features(layer, labels_features.init_features(L.labels_volume(layer), None, names,
                                                                self.results.flag_rule()))
        self.panel.say("The label image was replaced: earlier results were cleared; every cell is 'not audited'.")

    def _recompute(self, labels_to_do) -> None:
        """Recompute the CAMs of cells whose crops moved after an edit (in the background)."""
        current = self.table.current_label()
        self._forced_selection = list(labels_to_do)
        try:
            self.run(only_selected=True)
        finally:
            self._forced_selection = None
            if current is not None:
                self.table.select_label(current)

    # ------------------------------------------------------------------ save / export
    def _save_dialog(self) -> None:
        folder, _ = QFileDialog.getSaveFileName(self, "Save the audit as a folder", "gradcamo-audit")
        if folder:
            self.save_results(folder)

    def save_results(self, folder) -> bool:
        """Write image, masks, maps and table to a new results folder (see :mod:`napari_gradcamo.output.results_folder`).

        Only the references are gathered here; stacking the stains and writing the files (seconds for a
        real-sized field) run in the panel's worker, with progress. Returns False with the reason shown when
        the save cannot start; True when it started (when jobs run synchronously: when it succeeded)."""
        from napari_gradcamo.output.results_folder import ResultsFolderError

        layer = self.labels_layer
        try:
            if layer is None:
                raise ImageError("Choose the Labels layer first.")
            if self.busy:
                raise ImageError("An audit or export is running; save when it has finished.")
            image_layers = self.picker.layers()
            if not image_layers:
                raise ImageError("No image layer is selected; tick the layers that hold the stains.")
            if Path(folder).exists():
                raise ResultsFolderError(f"{folder} exists; choose a new folder name or allow overwriting it.")
        except (ImageError, ResultsFolderError) as error:
            self.panel.end(f"Not saved: {error}", error=True)
            return False
        rule = self.results.flag_rule()
        args = (folder, image_layers, L.labels_volume(layer), self.features(layer), dict(self.cams(layer)),
                self.model_panel.model_name, layer.metadata.get(RUN_RECORD_KEY),
                {"on": rule.on, "threshold": rule.threshold})
        self._save_ok = None
        self._refresh_buttons(running=True)
        self.panel.start(f"Saving the audit to {folder}…", _save_job, *args,
                         on_return=self._on_saved, on_error=self._on_save_error,
                         on_finished=lambda: self._refresh_buttons(running=False))
        return self._save_ok is not False if not self.synchronous else bool(self._save_ok)

    @guarded
    def _on_saved(self, path) -> None:
        if path is None:
            self._save_ok = False
            self.panel.end("Save cancelled: nothing was written.")
            return
        self._save_ok = True
        self.unsaved = False
        self.panel.end(f"Audit saved to {path} (File > Open… that folder brings it back).")

    @guarded
    def _on_save_error(self, error) -> None:
        from napari_gradcamo._qt.panel import first_line
        from napari_gradcamo.progress import Cancelled

        self._save_ok = False
        if isinstance(error, Cancelled):
            self.panel.end("Save cancelled: nothing was written.")
            return
        self.panel.end(f"Not saved: {first_line(error)}", error=True)

    def autosave(self) -> Path | None:
        """Save an audit that was not saved to a new folder under :func:`autosave_root` (napari is closing);
        returns the folder, or None when there was nothing to save or it could not be saved."""
        layer = self.labels_layer
        if not self.unsaved or layer is None or layer not in self.viewer.layers:
            return None
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", layer.name).strip("_") or "audit"
        folder = autosave_root() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        # napari is closing: this save cannot wait for a worker (the one save that holds the main thread)
        was, self.panel.synchronous = self.panel.synchronous, True
        try:
            if not self.save_results(folder):
                return None
        finally:
            self.panel.synchronous = was
        from napari.utils.notifications import show_info

        show_info(f"The unsaved audit was saved to {folder} (File > Open… that folder brings it back).")
        return folder

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export flagged cells to a folder")
        if folder:
            self.export_to(folder)

    def export_to(self, folder, overwrite: bool = False) -> bool:
        """Export to ``folder``; asks before overwriting. Returns True when the export started."""
        layer = self.labels_layer
        try:
            if layer is None:
                raise ImageError("Choose the Labels layer first.")
            image_layers = self.picker.layers()
            if not image_layers:
                raise ImageError("No image layer is selected; tick the layers that hold the stains.")
        except ImageError as error:
            self.panel.end(str(error), error=True)
            return False
        table = self.features(layer)
        crop_shape = self.bundle.metadata.crop_shape if self.bundle is not None else None
        # the stains are stacked and the masks copied in the worker (seconds on a real-sized field)
        args = (folder, image_layers, L.labels_volume(layer), table, dict(self.cams(layer)), crop_shape, overwrite,
                layer.metadata.get(RUN_RECORD_KEY), self.results.flag_rule())
        self._refresh_buttons(running=True)
        self.panel.start(
            f"Exporting {int(table['flagged'].sum())} flagged cell(s) to {folder}…", _export_job, *args,
            on_return=self._on_export_done, on_error=lambda error: self._on_export_error(error, folder),
            on_finished=lambda: self._refresh_buttons(running=False),
        )
        return True

    @guarded
    def _on_export_done(self, result) -> None:
        if result is None:
            self.panel.end("Export cancelled.")
            return
        self.last_export = result
        self.panel.end(result.describe())
        from napari.utils.notifications import show_info

        show_info(result.describe())

    @guarded
    def _on_export_error(self, error, folder) -> None:
        from napari_gradcamo._qt.panel import first_line
        from napari_gradcamo.output.export import ExportExistsError

        if isinstance(error, ExportExistsError):
            if ask_overwrite(self, error):
                self.panel.end("Overwriting…")
                self.panel.job = None
                self.export_to(folder, overwrite=True)
            else:
                self.panel.end("Export cancelled: no file was overwritten.")
            return
        self.panel.end(f"Export failed: {first_line(error)}", error=True)


#: Where an unsaved audit is written when napari closes (default: ~/napari-gradcamo-autosave)
AUTOSAVE_ENV = "NAPARI_GRADCAMO_AUTOSAVE_DIR"


def autosave_root() -> Path:
    return Path(os.environ.get(AUTOSAVE_ENV) or Path.home() / "napari-gradcamo-autosave")


def ask_overwrite(parent, error) -> bool:
    """Ask before overwriting an earlier export; True = overwrite."""
    answer = QMessageBox.question(
        parent, "Overwrite earlier export?",
        f"{error}\n\nReplace those files with this export? (No keeps them and writes nothing.)",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def _export_job(folder, image_layers, labels, table, cams, crop_shape, overwrite, run_record, rule, cancel):
    from napari_gradcamo.output.export import iter_export_flagged

    image = L.image_from_layers(image_layers)
    labels = np.array(labels, copy=True)
    return (yield from iter_export_flagged(folder, image, labels, table, cams, crop_shape, overwrite=overwrite,
                                           run_record=run_record, flag_rule=rule, cancel=cancel))


def _save_job(folder, image_layers, labels, table, cams, model_name, run_record, rule, cancel):
    """Worker body of Save audit…: stack the stains, copy the masks, write the folder (atomically)."""
    from napari_gradcamo.output.results_folder import ResultsFolder, write_results_folder
    from napari_gradcamo.progress import check

    yield (0, 3, "Saving: gathering the stains…")
    image = L.image_from_layers(image_layers)
    masks = np.array(labels, copy=True)
    check(cancel, "the save")
    yield (1, 3, f"Saving: writing {image.data.nbytes / 1e6:.0f} MB of image, the masks, "
                 f"{len(cams)} map(s) and the table…")
    saved = ResultsFolder(image.data, list(image.channel_names), tuple(image.voxel_size), masks, table, cams,
                          model_name, run_record, rule)
    path = write_results_folder(folder, saved)
    yield (3, 3, "")
    return path


def _find_cells_job(data, labels):
    """Worker body of Delete cell: the voxels of each label (one pass over the label image)."""
    import threading

    data = np.asarray(data)
    wanted = np.asarray(sorted(set(int(v) for v in labels)), dtype=data.dtype)
    where = np.nonzero(np.isin(data, wanted))
    values = data[where]
    found = {}
    for label in wanted:
        keep = values == label
        found[int(label)] = tuple(w[keep] for w in where)
    yield (1, 1, "")
    return found, threading.current_thread().name


def _measure_job(labels, touched, cams):
    """Worker body of a mask edit: measure (and rescore) the edited cells."""
    yield (0, 1, "")
    return labels_features.measure_edit(labels, touched, cams)


def _composite_job(shape, maps):
    """Worker body: the all-cells map from ``maps`` (``{label: CellCam}``)."""
    yield (0, 1, "")
    return labels_features.composite_cam(shape, maps.values())
