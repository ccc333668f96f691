"""'Grad-CAMO audit': load a model, run the audit in a worker, and explore the per-cell results.

The widget is wiring only: the audit, scores, flags, colours, edits and export are the core's
(:mod:`napari_gradcamo.audit.run`, :mod:`napari_gradcamo.audit.labels_features`, :mod:`napari_gradcamo.io.export`).
``labels.features`` is the one source of truth: the table, the label colours and the export all
read it, and every change goes through it.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt._compat import avoid_llvm_clash
from napari_gradcamo._qt.panel import JobPanel
from napari_gradcamo._qt.pickers import ImageLayersPicker, LabelsLayerPicker, guarded
from napari_gradcamo._qt.table import ResultsTable
from napari_gradcamo._qt.workers import default_synchronous, start_job, with_progress
from napari_gradcamo.audit import labels_features, results
from napari_gradcamo.io.images import ImageError
from napari_gradcamo.progress import Cancelled, CancelToken

UNMAPPED = "— choose —"
INVALID_STYLE = "border: 2px solid #e0443e;"
PREDICTED = "predicted class"


def _swatch(rgba, width: int = 14) -> str:
    r, g, b = (int(round(255 * float(v))) for v in rgba[:3])
    return f'<span style="background-color: rgb({r},{g},{b});">{"&nbsp;" * 4}</span>'


def legend_html(legend: labels_features.Legend) -> str:
    """The legend as rich text: colour swatches (and a Grad-CAMO gradient with the threshold)."""
    from html import escape

    lines = [f"<b>{escape(legend.title)}</b>"]
    if legend.gradient:
        bar = "".join(_swatch(c) for c in legend.gradient)
        lines.append(f"0&nbsp;{bar}&nbsp;1 &nbsp; (threshold {legend.threshold:.2f})")
    lines += [f"{_swatch(color)}&nbsp;{escape(text)}" for text, color in legend.swatches]
    return "<br>".join(lines)


def _audit_job(image, labels, bundle, settings, only, cancel):
    """Worker body: yield each finished batch of the core audit; return 'done' or 'cancelled'."""
    from napari_gradcamo.audit.run import iter_audit

    try:
        for batch in iter_audit(image, labels, bundle, settings, only, cancel):
            yield batch
            if cancel.cancelled:
                return "cancelled"
    except Cancelled:
        return "cancelled"
    return "done"


class AuditWidget(QWidget):
    """Load a classifier, audit every cell's Grad-CAM, and browse, flag and export the results."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.synchronous = default_synchronous()
        self.bundle = None
        self.layer_infos: list = []
        self.labels_layer = None
        self.job = None
        self._cancel: CancelToken | None = None
        self._run: dict | None = None
        self._cams: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # labels layer -> {label: CellCam}
        self._composites: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._pending: set[int] = set()
        self._forced_selection: list[int] | None = None
        self._queued_edits: set[int] = set()
        self._edit_scheduled = False
        self._selecting = False
        self._owner = f"audit-{id(self)}"
        self.last_export = None
        self.timings: dict[str, float] = {}
        self._build_ui()
        self._connect()
        self._on_labels_changed(self.labels_picker.layer())
        self._refresh_mapping()
        self._refresh_buttons()

    # ================================================================== UI
    def _build_ui(self) -> None:
        from napari_gradcamo.audit.cam import CAM_METHODS

        v = self.viewer
        self.picker = ImageLayersPicker(v, self)
        self.labels_picker = LabelsLayerPicker(v, self)
        data_box = QGroupBox("Data", self)
        data_form = QFormLayout(data_box)
        data_form.addRow("Image channels", self.picker)
        data_form.addRow("Cell masks", self.labels_picker)

        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip("Bundled demo models and checkpoints opened before.")
        self.open_button = QPushButton("Open…", self)
        self.open_button.setToolTip("Load a checkpoint (.safetensors, or a .pt state dict with a .json beside it).")
        self.model_info = QLabel("No model loaded.", self)
        self.model_info.setWordWrap(True)
        self.mapping_box = QWidget(self)
        self.mapping_form = QFormLayout(self.mapping_box)
        self.mapping_form.setContentsMargins(0, 0, 0, 0)
        self.mapping_combos: list[QComboBox] = []
        self.mapping_message = QLabel("", self)
        self.mapping_message.setWordWrap(True)
        self.method = QComboBox(self)
        self.method.addItems(list(CAM_METHODS))
        self.method.setToolTip("Grad-CAM variant (those that work on 3D networks).")
        self.target_layer = QComboBox(self)
        self.target_layer.setToolTip("Layer whose activations the CAM uses (any depth, indented as a tree); the output "
                                     "shape (ch, z×y×x or y×x) is shown. Type to search.")
        self.target_layer.setEditable(True)
        self.target_layer.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.target_layer.completer().setFilterMode(Qt.MatchFlag.MatchContains)
        self.target_layer.completer().setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.target_class = QComboBox(self)
        self.target_class.setToolTip("Explain the predicted class of each cell, or one fixed class.")
        self.batch_size = QSpinBox(self)
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(8)
        self.device = QComboBox(self)
        self.device.addItems(["auto", "cpu"])
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.open_button)
        model_box = QGroupBox("Model", self)
        model_form = QFormLayout(model_box)
        model_form.addRow("Checkpoint", model_row)
        model_form.addRow(self.model_info)
        model_form.addRow(QLabel("Image channel for each model channel:"))
        model_form.addRow(self.mapping_box)
        model_form.addRow(self.mapping_message)
        model_form.addRow("CAM method", self.method)
        model_form.addRow("Target layer", self.target_layer)
        model_form.addRow("Target class", self.target_class)
        model_form.addRow("Batch size", self.batch_size)
        model_form.addRow("Device", self.device)

        self.run_all_button = QPushButton("Run on all cells", self)
        self.run_selected_button = QPushButton("Run on selected", self)
        self.run_selected_button.setToolTip("Cells selected in the table (or the layer's selected label).")
        self.panel = JobPanel(self)
        run_box = QGroupBox("Run", self)
        run_layout = QVBoxLayout(run_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_all_button)
        buttons.addWidget(self.run_selected_button)
        run_layout.addLayout(buttons)
        run_layout.addWidget(self.panel)

        settings = QWidget(self)
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        for box in (data_box, model_box, run_box):
            settings_layout.addWidget(box)
        settings_layout.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(settings)

        self.threshold = QDoubleSpinBox(self)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("Cells with Grad-CAMO below this (or undefined) are flagged.")
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setValue(50)
        self.color_mode = QComboBox(self)
        self.color_mode.addItem("flag", "flag")
        self.color_mode.addItem("Grad-CAMO", "score")
        self.color_mode.setToolTip("Colour the cells by their flag or by their Grad-CAMO.")
        self.show_all = QCheckBox("all-cells Grad-CAM layer", self)
        self.show_all.setChecked(True)
        self.show_all.setToolTip("Every audited cell's map (each scaled to its own maximum) in one layer.")
        self.legend = QLabel(self)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.table = ResultsTable(self)
        self.flag_button = QPushButton("Flag / unflag selected", self)
        self.recheck_button = QPushButton("Re-check masks", self)
        self.recheck_button.setToolTip("Compare the label image with the table (e.g. after undo) and update rows.")
        self.export_button = QPushButton("Export flagged…", self)
        self.export_button.setToolTip("Table (CSV + Parquet), one OME-TIFF per flagged cell and a PNG gallery.")
        self.summary = QLabel("", self)
        self.summary.setWordWrap(True)
        thr_row = QHBoxLayout()
        thr_row.addWidget(QLabel("Threshold"))
        thr_row.addWidget(self.threshold)
        thr_row.addWidget(self.threshold_slider, 1)
        view_row = QHBoxLayout()
        view_row.addWidget(QLabel("Colour by"))
        view_row.addWidget(self.color_mode)
        view_row.addWidget(self.show_all, 1)
        action_row = QHBoxLayout()
        action_row.addWidget(self.flag_button)
        action_row.addWidget(self.recheck_button)
        action_row.addWidget(self.export_button)
        results_box = QGroupBox("Results", self)
        results_layout = QVBoxLayout(results_box)
        results_layout.addLayout(thr_row)
        results_layout.addLayout(view_row)
        results_layout.addWidget(self.legend)
        results_layout.addWidget(self.summary)
        results_layout.addWidget(self.table, 1)
        results_layout.addLayout(action_row)

        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(scroll)
        splitter.addWidget(results_box)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(splitter)
        self.setMinimumWidth(440)
        self._populate_models()

    def _connect(self) -> None:
        self.picker.changed.connect(self._refresh_mapping)
        self.labels_picker.layer_changed.connect(self._on_labels_changed)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.open_button.clicked.connect(self._open_dialog)
        self.run_all_button.clicked.connect(lambda: self.run(only_selected=False))
        self.run_selected_button.clicked.connect(lambda: self.run(only_selected=True))
        self.panel.cancel_button.clicked.connect(self.cancel)
        self.threshold.valueChanged.connect(self._on_threshold)
        self.threshold_slider.valueChanged.connect(lambda v: self.threshold.setValue(v / 100.0))
        self.color_mode.currentIndexChanged.connect(lambda *_: self._refresh_view())
        self.show_all.toggled.connect(self._on_show_all)
        self.table.label_selected.connect(lambda label: self.select_label(label, center=True))
        self.table.model.flag_toggled.connect(self._on_flag_toggled)
        self.flag_button.clicked.connect(self._flag_selected)
        self.recheck_button.clicked.connect(self.recheck_masks)
        self.export_button.clicked.connect(self._export_dialog)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    # ================================================================== model
    def _populate_models(self) -> None:
        from napari_gradcamo.models.bundled import bundled_models

        self.model_combo.clear()
        self.model_combo.addItem("— choose a checkpoint —", None)
        for name, path in bundled_models().items():
            self.model_combo.addItem(f"{name} (demo)", str(path))

    def _on_model_chosen(self, index: int) -> None:
        path = self.model_combo.itemData(index)
        if path:
            self.load_model(path)

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a classifier checkpoint", "", "Checkpoints (*.safetensors *.pt *.pth *.bin);;All files (*)"
        )
        if path:
            self.load_model(path)

    def load_model(self, path) -> bool:
        """Load a checkpoint, list its target layers and map its channels; False (with the reason) on failure."""
        from napari_gradcamo.audit.cam import default_target_layer, list_target_layers
        from napari_gradcamo.models.checkpoint import load_checkpoint
        from napari_gradcamo.models.metadata import CheckpointError

        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            bundle = load_checkpoint(path)
            meta = bundle.metadata
            infos = list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
            default = meta.target_layer or default_target_layer(infos)
        except (CheckpointError, ValueError, OSError, RuntimeError) as error:
            from html import escape

            kept = f" The loaded model ({Path(self.bundle.source).name}) is kept." if self.bundle is not None else ""
            self.model_info.setText(escape(f"Could not load {Path(path).name}: {error}{kept}"))
            self.model_info.setStyleSheet("color: #ff6b6b;")
            return False
        finally:
            QApplication.restoreOverrideCursor()
        self.bundle, self.layer_infos = bundle, infos
        _prewarm_cam_library()
        meta = bundle.metadata
        self.model_info.setStyleSheet("")
        self.model_info.setText(
            f"<b>{Path(path).name}</b>: {meta.architecture}<br>classes: {', '.join(meta.class_names)}<br>"
            f"channels: {', '.join(meta.channel_names)}<br>crop z×y×x: {'×'.join(map(str, meta.crop_shape))}"
            f"<br>head: {meta.head}; crops: {meta.crop_mode}<br>model voxel µm (z, y, x): "
            f"{_voxels(meta.voxel_size)} (the image's is its layer scale; crops are resampled between them)"
        )
        self.target_layer.clear()
        for info in infos:
            self.target_layer.addItem("  " * info.depth + info.label, info.name)
        names = [i.name for i in infos]
        if default not in names:  # a stored layer that cannot be used: shown, with why, so the menu never hides it
            self.target_layer.insertItem(0, f"{default}  (stored layer: not a single spatial output)", default)
            names.insert(0, default)
        self.target_layer.setCurrentIndex(names.index(default))
        self.target_class.clear()
        self.target_class.addItem(PREDICTED, None)
        for name in meta.class_names:
            self.target_class.addItem(name, name)
        self._refresh_devices()
        index = self.model_combo.findData(str(path))
        if index < 0:
            self.model_combo.addItem(Path(path).name, str(path))
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        self._refresh_mapping()
        self._refresh_buttons()
        return True

    def _refresh_devices(self) -> None:
        import torch

        devices = ["auto", "cpu"]
        if torch.cuda.is_available():
            devices.append("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append("mps")
        current = self.device.currentText()
        self.device.clear()
        self.device.addItems(devices)
        if current in devices:
            self.device.setCurrentText(current)

    # ================================================================== channel mapping
    @guarded
    def _refresh_mapping(self) -> None:
        """One combo per model channel, pre-set by name (case-insensitive); unmatched ones are flagged."""
        from napari_gradcamo.audit.run import resolve_channels

        image_names = self.picker.channel_names()
        previous = {c.property("model_channel"): c.currentText() for c in self.mapping_combos}
        while self.mapping_form.rowCount():
            self.mapping_form.removeRow(0)
        self.mapping_combos = []
        if self.bundle is None:
            self.mapping_message.setText("")
            return
        model_names = self.bundle.metadata.channel_names
        try:
            preset = resolve_channels(image_names, model_names)
        except ImageError:
            lower = [n.lower() for n in image_names]
            preset = [lower.index(m.lower()) if m.lower() in lower else None for m in model_names]
        for i, name in enumerate(model_names):
            combo = QComboBox(self.mapping_box)
            combo.setProperty("model_channel", name)
            combo.addItem(UNMAPPED, None)
            for j, image_name in enumerate(image_names):
                combo.addItem(f"{j}: {image_name}", j)
            keep = combo.findText(previous.get(name, ""))
            if keep > 0:
                combo.setCurrentIndex(keep)
            elif preset[i] is not None:
                combo.setCurrentIndex(preset[i] + 1)
            combo.currentIndexChanged.connect(self._check_mapping)
            self.mapping_form.addRow(name, combo)
            self.mapping_combos.append(combo)
        self._check_mapping()

    def _check_mapping(self, *args) -> str:
        """Validate the mapping; mark bad combos and return the problem ('' when it is fine)."""
        problem = ""
        chosen = [c.currentData() for c in self.mapping_combos]
        for combo, value in zip(self.mapping_combos, chosen):
            bad = value is None or chosen.count(value) > 1
            combo.setStyleSheet(INVALID_STYLE if bad else "")
        if self.bundle is not None:
            model_names = self.bundle.metadata.channel_names
            image_names = self.picker.channel_names()
            missing = [m for m, v in zip(model_names, chosen) if v is None]
            twice = sorted({image_names[v] for v in chosen if v is not None and chosen.count(v) > 1})
            if not image_names:
                problem = "Tick the image layers that hold the stains."
            elif missing:
                problem = (
                    f"Channel mismatch: the model needs {', '.join(model_names)}; the image has "
                    f"{', '.join(image_names)}. Choose an image channel for {', '.join(missing)}."
                )
            elif twice:
                problem = f"Channel mismatch: image channel(s) {', '.join(twice)} are used for two model channels."
        self.mapping_message.setText(problem)
        self.mapping_message.setStyleSheet("color: #ff6b6b;" if problem else "")
        return problem

    def set_channel_map(self, channel_map) -> None:
        """Choose the image channel index for each model channel (for scripts and tests)."""
        for combo, index in zip(self.mapping_combos, channel_map):
            combo.setCurrentIndex(0 if index is None else int(index) + 1)
        self._check_mapping()

    def channel_map(self) -> list[int]:
        problem = self._check_mapping()
        if problem:
            raise ImageError(problem)
        return [int(c.currentData()) for c in self.mapping_combos]

    # ================================================================== labels layer
    @guarded
    def _on_labels_changed(self, layer) -> None:
        old = self.labels_layer
        if old is layer:
            return
        if old is not None:
            self._disconnect_labels(old)
        self.labels_layer = layer
        if layer is not None:
            self._connect_labels(layer)
            self._ensure_features(layer)
        self._refresh_view()
        self._refresh_buttons()

    def _connect_labels(self, layer) -> None:
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data_replaced)
        layer.events.features.connect(self._on_features_event)
        layer.events.selected_label.connect(self._on_selected_label)
        if self._on_canvas_click not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_canvas_click)
        self._wrap_history(layer)

    def _disconnect_labels(self, layer) -> None:
        for emitter, handler in (
            (layer.events.paint, self._on_paint),
            (layer.events.data, self._on_data_replaced),
            (layer.events.features, self._on_features_event),
            (layer.events.selected_label, self._on_selected_label),
        ):
            try:
                emitter.disconnect(handler)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._on_canvas_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_canvas_click)

    def _wrap_history(self, layer) -> None:
        """Undo/redo change masks without a paint event: update the rows they touch afterwards."""
        if getattr(layer, "_gradcamo_history_wrapped", False):
            return
        widget = weakref.ref(self)

        def wrap(name: str, replayed_stack: str):
            original = getattr(layer, name)

            def wrapped(*args, **kwargs):
                result = original(*args, **kwargs)
                w = widget()
                stack = getattr(layer, replayed_stack, None)
                if w is not None and stack:
                    try:
                        w._apply_edit(labels_features.labels_in_edit(stack[-1]), layer)
                    except RuntimeError:
                        pass
                return result

            setattr(layer, name, wrapped)

        try:
            wrap("undo", "_redo_history")
            wrap("redo", "_undo_history")
            layer._gradcamo_history_wrapped = True
        except AttributeError:
            pass

    def cams(self, layer=None) -> dict:
        """This session's Grad-CAM maps for a labels layer: ``{label: CellCam}``."""
        layer = layer or self.labels_layer
        if layer is None:
            return {}
        return self._cams.setdefault(layer, {})

    def features(self, layer=None) -> pd.DataFrame:
        layer = layer or self.labels_layer
        return labels_features.ensure_schema(layer.features if layer is not None else None)

    def _ensure_features(self, layer) -> None:
        """Give every label a row (keeping rows and other tools' columns already in ``labels.features``)."""
        existing = layer.features
        keep = existing if isinstance(existing, pd.DataFrame) and ("label" in existing or "index" in existing) else None
        names = None if keep is not None and labels_features.class_names_of(keep) else (
            self.bundle.metadata.class_names if self.bundle is not None else []
        )
        table = labels_features.init_features(L.labels_volume(layer), keep, names, self.threshold.value())
        self._set_features(layer, table)

    def _set_features(self, layer, table: pd.DataFrame) -> None:
        if layer is None or layer not in self.viewer.layers:
            return
        layer.features = table  # emits features -> _on_features_event -> table + colours

    # ================================================================== run
    def _selected_for_run(self) -> list[int]:
        if self._forced_selection:
            return list(self._forced_selection)
        chosen = self.table.selected_labels()
        if not chosen and self.labels_layer is not None:
            label = int(self.labels_layer.selected_label)
            table = self.features()
            if label > 0 and (table["label"] == label).any():
                chosen = [label]
        return chosen

    def run(self, only_selected: bool = False) -> bool:
        """Start the audit on all cells (or the selected ones); False with the reason shown if it cannot start."""
        from napari_gradcamo.audit.run import AuditSettings
        from napari_gradcamo.io.images import check_labels_match

        if self.job is not None and self.job.running:
            self.panel.say("An audit is already running; Cancel it first.", error=True)
            return False
        layer = self.labels_layer
        try:
            if self.bundle is None:
                raise ImageError("Load a model first (Checkpoint → a demo model or Open…).")
            if layer is None or layer not in self.viewer.layers:
                raise ImageError("Choose the Labels layer with the cell masks (or run 'Segment cells').")
            image = self.picker.image()
            channel_map = self.channel_map()
            labels = np.array(L.labels_volume(layer), copy=True)
            check_labels_match(image, labels)
            only = self._selected_for_run() if only_selected else None
            if only_selected and not only:
                raise ImageError("No cell is selected: select rows in the table (or a label) first.")
        except ImageError as error:
            self.panel.say(str(error), error=True)
            return False
        meta = self.bundle.metadata
        settings = AuditSettings(
            method=self.method.currentText(),
            target_layer=self.target_layer.currentData(),
            target_class=self.target_class.currentData(),
            batch_size=int(self.batch_size.value()),
            device=self.device.currentText(),
            threshold=float(self.threshold.value()),
            channel_map=channel_map,
        )
        cams = self.cams(layer)
        if only is None:
            cams.clear()
            self._composites.pop(layer, None)
            table = labels_features.restart(self.features(layer), labels, meta.class_names, settings.threshold)
        else:
            for label in only:
                cams.pop(label, None)
            table = self.features(layer)
        self._set_features(layer, table)
        self._cancel = CancelToken()
        total = len(only) if only is not None else len(table)
        self._run = {"labels": layer, "image_layers": self.picker.layers(), "total": total, "done": 0,
                     "started": time.perf_counter(), "only": only, "stopped": ""}
        self._refresh_buttons(running=True)
        self.panel.begin(f"Grad-CAMO: {total} cell(s), {settings.method} at {settings.target_layer}…")
        self.job = start_job(
            _audit_job, image, labels, self.bundle, settings, only, self._cancel,
            synchronous=self.synchronous,
            on_yield=self._on_batch, on_return=self._on_run_return, on_error=self._on_run_error,
            on_finished=self._on_run_finished,
        )
        return True

    def cancel(self) -> None:
        """Stop after the current batch; finished rows stay in the table."""
        if self._cancel is not None:
            self._cancel.cancel()
        if self.job is not None and self.job.running:
            self.panel.say("Cancelling after the current batch…")

    @guarded
    def _on_batch(self, batch) -> None:
        run = self._run
        if run is None:
            return
        layer = run["labels"]
        if layer not in self.viewer.layers:
            return
        run["done"] = batch.done
        cams = self.cams(layer)
        cams.update(batch.cams)
        self._set_features(layer, labels_features.merge_rows(self.features(layer), batch.rows, self.threshold.value()))
        composite = self._composite(layer)
        for cam in batch.cams.values():
            labels_features.paste_cam(composite, cam)
        self._show_composite(layer)
        elapsed = time.perf_counter() - run["started"]
        self.panel.step(batch.done, batch.total, f"{batch.done}/{batch.total} cells · {elapsed:.1f} s")

    @guarded
    def _on_run_return(self, outcome) -> None:
        run = self._run or {}
        elapsed = time.perf_counter() - run.get("started", time.perf_counter())
        done, total = run.get("done", 0), run.get("total", 0)
        if run.get("stopped"):
            self.panel.end(run["stopped"], error=True)
            return
        if outcome == "cancelled" or (self._cancel is not None and self._cancel.cancelled):
            self.panel.end(f"Cancelled: {done} of {total} cells audited in {elapsed:.1f} s; their rows are kept.")
            return
        self.timings["audit_s"] = elapsed
        self.timings["cells"] = done
        per_cell = elapsed / done if done else float("nan")
        flagged = int(self.features()["flagged"].sum()) if self.labels_layer is not None else 0
        self.panel.step(done, max(total, 1))
        self.panel.end(f"Audited {done} cells in {elapsed:.1f} s ({per_cell:.2f} s/cell); {flagged} flagged.")

    @guarded
    def _on_run_error(self, error) -> None:
        run = self._run or {}
        if isinstance(error, Cancelled):
            self._on_run_return("cancelled")
            return
        if run.get("stopped"):
            self.panel.end(run["stopped"], error=True)
            return
        self.panel.end(f"The audit failed: {error}", error=True)

    @guarded
    def _on_run_finished(self) -> None:
        self._refresh_buttons(running=False)
        self._run = None
        if self._pending and self.labels_layer is not None:
            pending, self._pending = sorted(self._pending), set()
            present = set(self.features()["label"])
            pending = [p for p in pending if p in present]
            if pending and self.bundle is not None:
                self._recompute(pending)

    def _recompute(self, labels_to_do) -> None:
        """Recompute the CAMs of cells whose crops moved after an edit (in the background)."""
        layer = self.labels_layer
        current = self.table.current_label()
        for label in labels_to_do:
            self.cams(layer).pop(label, None)
        # select exactly those rows, then run on the selection
        self._forced_selection = list(labels_to_do)
        try:
            self.run(only_selected=True)
        finally:
            self._forced_selection = None
            if current is not None:
                self.table.select_label(current)

    @guarded
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        run = self._run
        if run is not None and self.job is not None and self.job.running:
            if layer is run["labels"] or layer in run["image_layers"]:
                kind = "labels" if layer is run["labels"] else "image"
                kept = "" if kind == "labels" else f" The {run['done']} cells finished so far keep their rows."
                run["stopped"] = (
                    f"The {kind} layer '{layer.name}' was deleted during the audit, so the audit was stopped.{kept}"
                )
                self.cancel()
                self.panel.say(run["stopped"], error=True)
        if layer is self.labels_layer:
            self._disconnect_labels(layer)
            self.labels_layer = None
            self._on_labels_changed(self.labels_picker.layer())

    # ================================================================== views
    def _on_features_event(self, event=None) -> None:
        self._refresh_view()

    @guarded
    def _refresh_view(self) -> None:
        layer = self.labels_layer
        mode = self.color_mode.currentData() or "flag"
        threshold = self.threshold.value()
        if layer is None:
            self.table.set_table(None)
            self.legend.setText(legend_html(labels_features.legend(mode, threshold)))
            self.summary.setText("")
            return
        table = self.features(layer)
        colors = labels_features.label_colors(table, mode)
        L.set_label_colors(layer, colors)
        self.table.set_table(table, colors)
        self.legend.setText(legend_html(labels_features.legend(mode, threshold, table)))
        s = results.summary(table)
        if s["cells"]:
            self.summary.setText(
                f"{s['cells']} audited · median Grad-CAMO {s['median_gradcamo']:.2f} (chance {s['median_chance']:.2f})"
                f" · {int(table['flagged'].sum())} flagged · {s['undefined']} undefined"
            )
        else:
            self.summary.setText(f"{len(table)} cells, none audited yet.")

    def _composite(self, layer) -> np.ndarray:
        shape = L.labels_volume(layer).shape
        comp = self._composites.get(layer)
        if comp is None or comp.shape != shape:
            comp = labels_features.composite_cam(shape, self.cams(layer).values())
            self._composites[layer] = comp
        return comp

    def _show_composite(self, layer) -> None:
        if not self.show_all.isChecked() or layer not in self.viewer.layers:
            return
        comp = self._composite(layer)
        data = comp[0] if layer.ndim == 2 else comp
        existing = L.find_role(self.viewer, L.ROLE_ALL_CAM, self._owner)
        if existing is not None and existing.data is data:
            existing.refresh()
            return
        L.upsert_image(
            self.viewer, L.ROLE_ALL_CAM, data, name=L.ALL_CAM_NAME, scale=list(layer.scale),
            translate=list(layer.translate), contrast_limits=(0.0, 1.0), colormap="magma",
            owner=self._owner, keep_active=layer, below=layer, opacity=0.6,
        )

    def _on_show_all(self, on: bool) -> None:
        existing = L.find_role(self.viewer, L.ROLE_ALL_CAM, self._owner)
        if on and self.labels_layer is not None and self.cams():
            self._show_composite(self.labels_layer)
        elif existing is not None:
            existing.visible = bool(on)

    def cell_cam_layer(self):
        return L.find_role(self.viewer, L.ROLE_CELL_CAM, self._owner)

    def all_cells_layer(self):
        return L.find_role(self.viewer, L.ROLE_ALL_CAM, self._owner)

    def select_label(self, label: int, center: bool = True) -> None:
        """Select a cell: its row, the layer's selected label, the camera, and its Grad-CAM layer."""
        layer = self.labels_layer
        if layer is None or self._selecting:
            return
        self._selecting = True
        try:
            label = int(label)
            self.table.select_label(label)
            layer.selected_label = label
            row = labels_features.row_of(self.features(layer), label)
            if row is not None and center:
                L.focus_on(self.viewer, layer, (row["centroid_z"], row["centroid_y"], row["centroid_x"]))
            self._show_cell_cam(layer, label)
        finally:
            self._selecting = False

    def _show_cell_cam(self, layer, label: int) -> None:
        cam = self.cams(layer).get(label)
        existing = self.cell_cam_layer()
        if cam is None:
            if existing is not None:
                existing.visible = False
            row = labels_features.row_of(self.features(layer), label)
            if row is not None and row["status"] == results.STATUS_AUDITED:
                self.panel.say(f"Cell {label} was audited before this session: its Grad-CAM is not in memory "
                               "('Run on selected' recomputes it).")
            else:
                self.panel.say(f"Cell {label} has no Grad-CAM yet (not audited).")
            return
        data = labels_features.cam_volume(cam)
        origin = tuple(cam.origin)
        scale = L.spatial_scale(layer)
        translate = labels_features.crop_world_translate(origin, scale, L.spatial_translate(layer))
        if layer.ndim == 2:
            data, scale, translate = data[0], scale[1:], translate[1:]
        L.upsert_image(
            self.viewer, L.ROLE_CELL_CAM, data, name=L.CELL_CAM_NAME, scale=list(scale), translate=list(translate),
            contrast_limits=(float(data.min()), float(data.max())), colormap="inferno", owner=self._owner,
            metadata={"label": label, "crop_origin": origin}, keep_active=layer, below=layer,
        )

    # ================================================================== interaction
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
        if label > 0 and (self.features(layer)["label"] == label).any():
            self._selecting = True
            try:
                self.table.select_label(label)
                self._show_cell_cam(layer, label)
            finally:
                self._selecting = False

    def _on_threshold(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(int(round(value * 100)))
        self.threshold_slider.blockSignals(False)
        self.set_threshold(value)

    def set_threshold(self, value: float) -> None:
        if abs(self.threshold.value() - value) > 1e-9:
            self.threshold.setValue(value)  # comes back here through _on_threshold
            return
        if self.labels_layer is not None:
            self._set_features(self.labels_layer, labels_features.reflag(self.features(), float(value)))

    def _on_flag_toggled(self, label: int) -> None:
        if self.labels_layer is not None:
            self._set_features(self.labels_layer, labels_features.toggle_flag(self.features(), label, self.threshold.value()))

    def _flag_selected(self) -> None:
        chosen = self.table.selected_labels()
        if not chosen or self.labels_layer is None:
            self.panel.say("Select rows in the table to flag or unflag them.")
            return
        table = self.features()
        flagged = table.set_index("label").loc[chosen, "flagged"]
        value = labels_features.OVERRIDE_UNFLAGGED if bool(flagged.all()) else labels_features.OVERRIDE_FLAGGED
        self._set_features(self.labels_layer, labels_features.set_override(table, chosen, value, self.threshold.value()))

    # ================================================================== mask edits
    @guarded
    def _on_paint(self, event) -> None:
        # napari emits `paint` as it records the undo step, which for a single paint/fill call is
        # *before* the pixels are written: read the masks once the event loop is back.
        self._queued_edits.update(labels_features.labels_in_edit(event.value))
        if not self._edit_scheduled:
            self._edit_scheduled = True
            QTimer.singleShot(0, self._flush_edits)

    @guarded
    def _flush_edits(self) -> None:
        self._edit_scheduled = False
        touched, self._queued_edits = set(self._queued_edits), set()
        self._apply_edit(touched, self.labels_layer)

    def _apply_edit(self, touched, layer) -> None:
        if layer is None or layer is not self.labels_layer or not touched:
            return
        cams = self.cams(layer)
        outcome = labels_features.apply_mask_edit(self.features(layer), L.labels_volume(layer), touched, cams, self.threshold.value())
        for label in outcome.removed + outcome.moved:
            cams.pop(label, None)
        if outcome.removed or outcome.moved:
            self._composites.pop(layer, None)
            if self.all_cells_layer() is not None:
                self._show_composite(layer)
        self._set_features(layer, outcome.table)
        notes = []
        if outcome.rescored:
            notes.append(f"rescored {', '.join(map(str, outcome.rescored))} with the cached Grad-CAM")
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
            if self.job is None or not self.job.running:
                pending, self._pending = sorted(self._pending), set()
                self._recompute(pending)

    def recheck_masks(self) -> None:
        """Compare the label image with the table and update every row whose mask changed."""
        layer = self.labels_layer
        if layer is None:
            return
        from napari_gradcamo.crops.extract import cell_table

        table = self.features(layer)
        current = {c.label: c for c in cell_table(L.labels_volume(layer))}
        known = table.set_index("label")
        touched = set(known.index) ^ set(current)
        for label, cell in current.items():
            if label in known.index:
                row = known.loc[label]
                if int(row["volume_voxels"]) != cell.volume or not np.allclose(
                    [row["centroid_z"], row["centroid_y"], row["centroid_x"]], cell.centroid
                ):
                    touched.add(label)
        self._apply_edit(touched, layer)
        if not touched:
            self.panel.say("Masks and table agree; nothing to update.")

    @guarded
    def _on_data_replaced(self, event=None) -> None:
        layer = self.labels_layer
        if layer is None:
            return
        self.cams(layer).clear()
        self._composites.pop(layer, None)
        for found in (self.cell_cam_layer(), self.all_cells_layer()):
            if found is not None:
                found.visible = False
        names = self.bundle.metadata.class_names if self.bundle is not None else []
        self._set_features(layer, labels_features.init_features(L.labels_volume(layer), None, names, self.threshold.value()))
        self.panel.say("The label image was replaced: earlier results were cleared; every cell is 'not audited'.")

    # ================================================================== export
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
            image = self.picker.image()
        except ImageError as error:
            self.panel.say(str(error), error=True)
            return False
        table = self.features(layer)
        crop_shape = self.bundle.metadata.crop_shape if self.bundle is not None else None
        args = (folder, image, np.array(L.labels_volume(layer)), table, dict(self.cams(layer)), crop_shape)
        self.panel.begin(f"Exporting {int(table['flagged'].sum())} flagged cell(s) to {folder}…")
        self._export_args = args
        self._refresh_buttons(running=True)
        self.job = start_job(
            _export_job, args, overwrite, synchronous=self.synchronous,
            on_yield=lambda u: self.panel.step(*u), on_return=self._on_export_done,
            on_error=self._on_export_error, on_finished=lambda: self._refresh_buttons(running=False),
        )
        return True

    @guarded
    def _on_export_done(self, result) -> None:
        if result is None:
            return
        self.last_export = result
        self.panel.end(result.describe())
        try:
            from napari.utils.notifications import show_info

            show_info(result.describe())
        except Exception:
            pass

    @guarded
    def _on_export_error(self, error) -> None:
        from napari_gradcamo.io.export import ExportExistsError

        if isinstance(error, ExportExistsError):
            answer = QMessageBox.question(
                self, "Overwrite files?", f"{error}\n\nOverwrite them?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
            )
            if answer == QMessageBox.StandardButton.Yes:
                self.panel.end("Overwriting…")
                folder = self._export_args[0]
                self.job = None
                self.export_to(folder, overwrite=True)
                return
            self.panel.end("Export cancelled: no file was overwritten.")
            return
        self.panel.end(f"Export failed: {error}", error=True)

    # ================================================================== state
    def _refresh_buttons(self, running: bool | None = None) -> None:
        if running is None:
            running = self.job is not None and self.job.running
        ready = self.bundle is not None and self.labels_layer is not None
        self.run_all_button.setEnabled(ready and not running)
        self.run_selected_button.setEnabled(ready and not running)
        self.open_button.setEnabled(not running)
        self.model_combo.setEnabled(not running)
        self.export_button.setEnabled(self.labels_layer is not None and not running)


_PREWARMED = False


def _voxels(size) -> str:
    return "unknown" if size is None else " × ".join(f"{float(v):g}" for v in size)


def _prewarm_cam_library() -> None:
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


def _export_job(args, overwrite):
    from napari_gradcamo.io.export import export_flagged

    result = yield from with_progress(export_flagged, *args, overwrite=overwrite)
    return result
