"""'Grad-CAMO audit': assembles the model, run and results panels and keeps the viewer in step.

The audit, scores, flags, colours, edits and export are the core's (:mod:`napari_gradcamo.audit.run`,
:mod:`napari_gradcamo.audit.labels_features`, :mod:`napari_gradcamo.output.export`). ``labels.features``
is the one source of truth: the table, the label colours and the export all read it.

Running without blocking the main thread: :mod:`napari_gradcamo._qt.audit_runner`.
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt._compat import avoid_llvm_clash
from napari_gradcamo._qt.audit_edits import AuditEditsMixin
from napari_gradcamo._qt.audit_runner import TICK_MS, AuditRun, AuditRunMixin, prewarm_cam_library
from napari_gradcamo._qt.cam_layers import CamLayers
from napari_gradcamo._qt.mask_edits import MaskEditWatcher
from napari_gradcamo._qt.model_panel import ModelPanel
from napari_gradcamo._qt.panel import JobPanel, PanelJobs
from napari_gradcamo._qt.pickers import ImageLayersPicker, LabelsLayerPicker, guarded
from napari_gradcamo._qt.results_panel import ResultsPanel, legend_html  # noqa: F401  (legend_html: public API)
from napari_gradcamo._qt.verdict_panel import VerdictPanel
from napari_gradcamo._results_io import FLAG_RULE_KEY
from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit.session import AuditSession
from napari_gradcamo.io.images import ImageError


class AuditWidget(AuditRunMixin, AuditEditsMixin, PanelJobs, QWidget):
    """Load a classifier, audit every cell's Grad-CAM, and browse, flag and export the results."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.labels_layer = None
        self.run_state: AuditRun | None = None
        # labels layer -> its Qt-free AuditSession (maps, all-cells map, deleted rows kept for undo)
        self._sessions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        # labels layer -> (napari's features object, the same table brought to the schema): see features()
        self._schema_tables: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._setting: tuple | None = None  # (layer, table) while _set_features hands a table to napari
        self._pending: set[int] = set()
        # mask edits measured in workers (AuditEditsMixin): the jobs, labels waiting, and which thread worked
        self._delete_job = self._edit_job = self._map_job = None
        self._edit_queue: set[int] = set()
        self._edit_generation = 0
        self._map_again = False
        self.last_edit_thread = ""
        self.last_delete_thread = ""
        self._view_steps: list = []  # view updates waiting for an event-loop turn each (AuditRunMixin._in_turns)
        self._forced_selection: list[int] | None = None
        self._selecting = False
        self._last_selected: int | None = None
        self.cam_layers = CamLayers(napari_viewer, f"audit-{id(self)}")
        self.watcher = MaskEditWatcher(self)
        self.last_export = None
        self.timings: dict[str, float] = {}
        self.unsaved = False  # an audit ran (or cells were rescored) since the last save
        self._watched_window = lambda: None
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(TICK_MS)
        self._refresh_timer.timeout.connect(self._refresh_tick)
        prewarm_cam_library()
        # napari's label colouring compiles (numba) in a thread of its own; cells are recoloured when it is done
        self._colour_timer = QTimer(self)
        self._colour_timer.setInterval(100)
        self._colour_timer.timeout.connect(self._colour_when_warm)
        self._warm_colours()
        self._build_ui()
        self._connect()
        self._on_labels_changed(self.labels_picker.layer())
        self._refresh_buttons()

    # ================================================================== UI
    def _build_ui(self) -> None:
        self.picker = ImageLayersPicker(self.viewer, self)
        self.labels_picker = LabelsLayerPicker(self.viewer, self)
        data_box = QGroupBox("Data", self)
        data_form = QFormLayout(data_box)
        data_form.addRow("Image channels", self.picker)
        data_form.addRow("Cell masks", self.labels_picker)
        self.model_panel = ModelPanel(self.picker, self)
        settings = QWidget(self)
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        settings_layout.addWidget(data_box)
        settings_layout.addWidget(self.model_panel)
        settings_layout.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(settings)

        # the run strip sits outside the scroll area: Run, Cancel and the status are always in view
        self.run_all_button = QPushButton("Run on all cells", self)
        self.run_selected_button = QPushButton("Run on selected", self)
        self.run_selected_button.setToolTip("Cells selected in the table (or the layer's selected label).")
        self.panel = JobPanel(self)
        run_box = QGroupBox("Run", self)
        run_layout = QVBoxLayout(run_box)
        run_layout.setContentsMargins(4, 2, 4, 2)  # tight: the table below keeps ≥ 8 rows at 1366×768 (issue 24)
        run_layout.setSpacing(3)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_all_button)
        buttons.addWidget(self.run_selected_button)
        self.save_button = QPushButton("Save audit…", self)
        self.save_button.setToolTip("Image, masks, per-cell maps and table in one folder (File > Open reads it back).")
        buttons.addWidget(self.save_button)
        run_layout.addLayout(buttons)
        run_layout.addWidget(self.panel)
        self.results = ResultsPanel(self)
        self.verdict = VerdictPanel(self._verdict_inputs, self.panel, self)

        lower = QWidget(self)
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.setSpacing(3)
        lower_layout.addWidget(run_box)
        lower_layout.addWidget(self.verdict)
        lower_layout.addWidget(self.results, 1)
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(scroll)
        splitter.addWidget(lower)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        self.splitter, self.settings_scroll = splitter, scroll
        self._arranged_for: str | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(splitter)
        self.setMinimumWidth(420)
        # short names used by scripts and tests
        mp, rp = self.model_panel, self.results
        self.model_info, self.mapping_message, self.target_layer = mp.model_info, mp.mapping_message, mp.target_layer
        self.method, self.target_class, self.batch_size, self.device = mp.method, mp.target_class, mp.batch_size, mp.device
        self.threshold, self.threshold_slider, self.color_mode = rp.threshold, rp.threshold_slider, rp.color_mode
        self.show_all, self.legend, self.summary, self.table = rp.show_all, rp.legend, rp.summary, rp.table
        self.export_button = rp.export_button

    def _connect(self) -> None:
        self.labels_picker.layer_changed.connect(self._on_labels_changed)
        self.model_panel.model_changed.connect(self._on_model_changed)
        self.model_panel.loading_changed.connect(lambda *_: self._refresh_buttons())
        self.run_all_button.clicked.connect(lambda: self.run(only_selected=False))
        self.run_selected_button.clicked.connect(lambda: self.run(only_selected=True))
        self.results.threshold.valueChanged.connect(self.set_threshold)
        self.results.flag_on.currentIndexChanged.connect(lambda *_: self.set_threshold(self.results.threshold.value()))
        self.results.color_mode.currentIndexChanged.connect(lambda *_: self._refresh_view())
        self.results.show_all.toggled.connect(self._on_show_all)
        self.results.table.label_selected.connect(lambda label: self.select_label(label, center=True))
        self.results.table.model.flag_toggled.connect(self._on_flag_toggled)
        self.results.flag_button.clicked.connect(self._flag_selected)
        self.results.delete_button.clicked.connect(self.delete_selected_cells)
        self.results.recheck_button.clicked.connect(self.recheck_masks)
        self.results.export_button.clicked.connect(self._export_dialog)
        self.save_button.clicked.connect(self._save_dialog)
        self.watcher.edited.connect(self._apply_edit)
        self.watcher.replaced.connect(self._on_data_replaced)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    # ================================================================== model
    @property
    def bundle(self):
        return self.model_panel.bundle

    @property
    def synchronous(self) -> bool:
        """Jobs (the audit, saves, exports, model loads, mask-edit rescoring) run inline (tests)."""
        return self.panel.synchronous

    @synchronous.setter
    def synchronous(self, value: bool) -> None:
        self.panel.synchronous = self.model_panel.synchronous = bool(value)

    def showEvent(self, event) -> None:
        """Watch the napari window this dock lives in: an unsaved audit is saved when it closes."""
        super().showEvent(event)
        window = self.window()
        if window is not self and window is not self._watched_window():
            window.installEventFilter(self)
            self._watched_window = weakref.ref(window)  # no reference cycle through napari's window

    def eventFilter(self, watched, event) -> bool:
        if watched is self._watched_window() and event.type() == QEvent.Type.Close:
            self.autosave()
        return False

    def _verdict_inputs(self) -> tuple:
        """(image layers, labels, model, settings) for :class:`VerdictPanel`, or an ImageError saying what is
        missing. The verdict samples cells and picks its own layer; the flag rule stays the table's."""
        if self.busy:
            raise ImageError("An audit is running; judge the model when it has finished.")
        if self.model_panel.loading:
            raise ImageError("A model is loading; judge it when it has loaded.")
        if self.bundle is None:
            raise ImageError("Load a model first (Checkpoint → a demo model or Open…).")
        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers:
            raise ImageError("Choose the Labels layer with the cell masks (or run 'Segment cells').")
        image_layers = self.picker.layers()
        if not image_layers:
            raise ImageError("No image layer is selected; tick the layers that hold the stains.")
        return image_layers, L.labels_volume(layer), self.bundle, self.model_panel.audit_settings(self.results.flag_rule())

    @property
    def mapping_combos(self) -> list:
        return self.model_panel.mapping_combos

    def load_model(self, path, background: bool = False) -> bool:
        """Load a checkpoint (see :meth:`ModelPanel.load_model`; ``background``: in a worker, as the
        Checkpoint combo and Open… do)."""
        return self.model_panel.load_model(path, background=background)

    def set_channel_map(self, channel_map) -> None:
        self.model_panel.set_channel_map(channel_map)

    def channel_map(self) -> list[int]:
        return self.model_panel.channel_map()

    def _on_model_changed(self, bundle) -> None:
        self._refresh_view()
        self._refresh_buttons()
        self._add_map_layer()
        if self.model_panel.mapping_message.text():  # a channel mismatch: show the mapping boxes
            self._arrange("settings", force=True)
            QTimer.singleShot(0, self._show_mapping)  # once the new boxes are laid out

    @guarded
    def _show_mapping(self) -> None:
        self.settings_scroll.widget().adjustSize()
        self.settings_scroll.ensureWidgetVisible(self.model_panel.mapping_box, 0, 0)
        self.settings_scroll.ensureWidgetVisible(self.model_panel.mapping_message, 0, 0)

    def _arrange(self, phase: str, force: bool = False) -> None:
        """Share the dock's height between settings and results by phase: before any cell is audited the
        settings (data, model, channel mapping) get most of it, afterwards the results table does (on a
        1366×768 screen both cannot be shown whole). A phase is arranged once, so a splitter the user
        moved stays where they put it."""
        if phase == self._arranged_for and not force:
            return
        self._arranged_for = phase
        total = max(sum(self.splitter.sizes()), 1000)  # before it is shown, Qt takes the sizes as weights
        share = 0.62 if phase == "settings" else 0.16  # results: ≥ 8 table rows at 1366×768 (issue 24)
        self.splitter.setSizes([int(total * share), total - int(total * share)])

    # ================================================================== labels layer
    @guarded
    def _on_labels_changed(self, layer) -> None:
        old = self.labels_layer
        if old is layer:
            return
        if old is not None:
            self._let_go(old)
        self.labels_layer = layer
        self.watcher.watch(layer)
        if layer is not None:
            layer.events.features.connect(self._on_features_event)
            layer.events.selected_label.connect(self._on_selected_label)
            if self._on_canvas_click not in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.append(self._on_canvas_click)
            # maps first: a new table or rule recolours the layer, which re-emits selected_label (shows its map)
            saved = layer.metadata.get("gradcamo_cams")  # a results folder opened by the reader
            if saved and not self.cams(layer):
                self.cams(layer).update(saved)
            saved_rule = layer.metadata.get(FLAG_RULE_KEY)  # a results folder: its verdict, not the default's
            if isinstance(saved_rule, dict) and saved_rule.get("on") in self.results.RANGES:
                self.set_flag_rule(saved_rule["on"], float(saved_rule["threshold"]))
            self._ensure_features(layer)
        self._refresh_view()
        self._refresh_buttons()
        if layer is not None and self.cams(layer):
            self._show_composite(layer)  # maps given with the layer (results folder, plate field)
        else:
            self._add_map_layer()

    def _warm_colours(self) -> None:
        """Start compiling napari's colouring for the dtypes of the viewer's label images (background)."""
        from napari_gradcamo._qt.warmup import warm_label_colours

        for layer in L.labels_layers(self.viewer):
            warm_label_colours(L.labels_volume(layer).dtype)

    def _let_go(self, layer) -> None:
        for emitter, slot in ((layer.events.features, self._on_features_event),
                              (layer.events.selected_label, self._on_selected_label)):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._on_canvas_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_canvas_click)

    def cams(self, layer=None) -> dict:
        """This session's Grad-CAM maps for a labels layer: ``{label: CellCam}``."""
        layer = layer or self.labels_layer
        if layer is None:
            return {}
        return self.session(layer).cams

    def session(self, layer=None) -> AuditSession:
        """The Qt-free :class:`~napari_gradcamo.audit.session.AuditSession` of a labels layer."""
        layer = layer or self.labels_layer
        found = self._sessions.get(layer)
        if found is None:
            found = self._sessions[layer] = AuditSession()
        return found

    def add_maps(self, layer, maps: dict) -> None:
        """Give the dock stored Grad-CAM maps of ``layer``'s cells (``{label: CellCam}``, e.g. a plate field's)."""
        self.session(layer).add_maps(maps)
        if layer is self.labels_layer and maps:
            self._show_composite(layer)
            self.panel.say(f"{len(maps)} stored Grad-CAM map(s) of '{layer.name}' loaded.")

    def features(self, layer=None) -> pd.DataFrame:
        """``labels.features`` brought to the schema (not to be changed in place: the functions of
        :mod:`~napari_gradcamo.audit.labels_features` return new tables). Conformed once per table napari
        holds, so the many readers of one update do not each redo it."""
        layer = layer or self.labels_layer
        if layer is None:
            return labels_features.ensure_schema(None)
        current = layer.features
        if self._setting is not None and self._setting[0] is layer:
            self._schema_tables[layer] = (current, self._setting[1])
        known = self._schema_tables.get(layer)
        if known is None or known[0] is not current:
            known = (current, labels_features.ensure_schema(current))
            self._schema_tables[layer] = known
        return known[1]

    def _ensure_features(self, layer) -> None:
        """Give every label a row (keeping rows and other tools' columns already in ``labels.features``)."""
        existing = layer.features
        keep = existing if isinstance(existing, pd.DataFrame) and ("label" in existing or "index" in existing) else None
        names = None if keep is not None and labels_features.class_names_of(keep) else (
            self.bundle.metadata.class_names if self.bundle is not None else []
        )
        table = labels_features.init_features(L.labels_volume(layer), keep, names, self.results.flag_rule())
        self._set_features(layer, table)

    def _set_features(self, layer, table: pd.DataFrame) -> None:
        if layer is None or layer not in self.viewer.layers:
            return
        self._setting = (layer, labels_features.ensure_schema(table))
        try:
            layer.features = self._setting[1]  # emits features -> _on_features_event -> table + colours
        finally:
            self._setting = None

    # ================================================================== views
    def _on_features_event(self, event=None) -> None:
        self._refresh_view()

    @guarded
    def _refresh_view(self) -> None:
        """Table, legend and label colours from ``labels.features`` (while a run goes on, the run's timer
        recolours the cells now and then: a new labels colormap costs a redraw of the masks)."""
        layer = self.labels_layer
        table = self.features(layer) if layer is not None else None
        self.results.set_color_modes(table)
        if table is None:
            self.results.show_table(None, None)
            return
        colors = self._label_colors(table)
        if (self.run_state is None or self.run_state.labels is not layer) and self._colours_ready(layer):
            L.set_label_colors(layer, colors)
        self.results.show_table(table, colors, self._made_by(table))
        self._arrange("results" if (table["status"] == "audited").any() else "settings")

    def _label_colors(self, table: pd.DataFrame) -> dict:
        mode, column = self.results.color_choice()
        return labels_features.label_colors(table, mode, column or "gradcamo")

    def _refresh_colours(self) -> None:
        """Recolour the cells from ``labels.features`` (nothing else)."""
        layer = self.labels_layer
        if layer is not None and layer in self.viewer.layers and self._colours_ready(layer):
            L.set_label_colors(layer, self._label_colors(self.features(layer)))

    def _colours_ready(self, layer) -> bool:
        """True when napari's colouring of this layer's dtype is compiled (:mod:`~napari_gradcamo._qt.warmup`);
        else the cells are recoloured when it is (jobs running synchronously wait for it here)."""
        from napari_gradcamo._qt.warmup import warm_label_colours

        ready = warm_label_colours(L.labels_volume(layer).dtype)
        if self.synchronous:
            ready.wait()
        if ready.is_set():
            return True
        if not self._colour_timer.isActive():
            self._colour_timer.start()
        return False

    @guarded
    def _colour_when_warm(self) -> None:
        from napari_gradcamo._qt.warmup import warm_label_colours

        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers:
            self._colour_timer.stop()
            return
        if warm_label_colours(L.labels_volume(layer).dtype).is_set():
            self._colour_timer.stop()
            if self.run_state is None or self.run_state.labels is not layer:
                self._refresh_colours()

    def _made_by(self, table: pd.DataFrame) -> str:
        """Which checkpoint made the rows, and a warning when it is not the loaded one."""
        made = sorted({m for m in table.get(labels_features.MODEL, pd.Series(dtype=object)).dropna() if m})
        if not made:
            return ""
        loaded = self.model_panel.model_name
        text = ", ".join(made)
        if loaded and made != [loaded]:
            text += f" (loaded now: {loaded}; run again to replace these results)"
        return text

    def _composite(self, layer) -> np.ndarray:
        return self.session(layer).composite(L.labels_volume(layer).shape)

    def _show_composite(self, layer) -> None:
        if self.show_all.isChecked() and layer in self.viewer.layers:
            self.cam_layers.show_all(layer, self._composite(layer))

    def _add_map_layer(self) -> None:
        """Add the all-cells map layer (hidden until it has maps) once a model and masks are there: adding a
        layer holds napari's main thread ~0.3 s under software OpenGL, too long to do while an audit runs."""
        layer = self.labels_layer
        if (layer is None or self.bundle is None or not self.show_all.isChecked() or self.busy
                or self.cam_layers.all_layer() is not None or layer not in self.viewer.layers):
            return
        self.cam_layers.show_all(layer, self._composite(layer), visible=bool(self.cams(layer)))

    def _on_show_all(self, on: bool) -> None:
        if on and self.labels_layer is not None and self.cams():
            self._show_composite(self.labels_layer)
        elif not on:
            self.cam_layers.hide(cell=False)

    def cell_cam_layer(self):
        return self.cam_layers.cell_layer()

    def all_cells_layer(self):
        return self.cam_layers.all_layer()

    # ================================================================== state
    def _refresh_buttons(self, running: bool | None = None) -> None:
        if running is None:
            running = self.busy
        ready = self.bundle is not None and self.labels_layer is not None and not self.model_panel.loading
        self.run_all_button.setEnabled(ready and not running)
        self.run_selected_button.setEnabled(ready and not running)
        self.model_panel.set_busy(running)
        self.export_button.setEnabled(self.labels_layer is not None and not running)
        self.save_button.setEnabled(self.labels_layer is not None and not running)  # a run's record is not finished
