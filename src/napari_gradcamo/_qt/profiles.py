"""'Profiles': single-cell profiles of a classifier as a UMAP, linked both ways to the cells in napari.

Compute profiles for the cells of the current image + labels (features of a chosen layer, spatially
averaged, with each cell's Grad-CAMO; sphered; UMAP), or load the ``cells.parquet`` / ``umap.parquet``
that ``gradcamo profile`` wrote. Clicking a point selects its cell in the labels layer (and centres the
view on it); selecting or clicking a cell in the labels layer rings its point. The computing lives in
:mod:`napari_gradcamo.profiles.extract`; this module only wires it to napari.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt._compat import avoid_llvm_clash
from napari_gradcamo._qt.model_panel import ModelPanel
from napari_gradcamo._qt.panel import JobPanel, PanelJobs
from napari_gradcamo._qt.pickers import ImageLayersPicker, LabelsLayerPicker, guarded
from napari_gradcamo._qt.profile_plot import (
    ALL_IMAGES,
    audit_dock_bundle,
    color_choices,
    draw_points,
    plain_summary,
    share_tab_with_audit_dock,
)
from napari_gradcamo.progress import Cancelled


def _profile_job(image, labels, bundle, layer, seed, channel_map, cam_layer, cancel):
    """Worker body: crops, then the core's profile steps (one per batch, then the UMAP); None if cancelled."""
    from napari_gradcamo.crops.datasets import cropset_from_image
    from napari_gradcamo.profiles.extract import iter_profile_table

    try:
        data = cropset_from_image(image, labels, bundle, channel_map=channel_map)
        table, info = yield from iter_profile_table(bundle, data, layer=layer, cam_layer=cam_layer, seed=seed,
                                                    cancel=cancel)
    except Cancelled:
        return None
    table.attrs = {}
    return table, info


def _scrolling(parent, *parts) -> QScrollArea:
    """``parts`` (widgets or layouts) stacked in a scroll area."""
    inner = QWidget(parent)
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(0, 0, 0, 0)
    for part in parts:
        (layout.addLayout if isinstance(part, QLayout) else layout.addWidget)(part)
    scroll = QScrollArea(parent)
    scroll.setWidgetResizable(True)
    scroll.setWidget(inner)
    return scroll


class ProfilesWidget(PanelJobs, QWidget):
    """UMAP of single-cell profiles, linked to a labels layer: click a point ↔ select a cell."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.bundle = None
        self.table: pd.DataFrame | None = None
        self.info: dict = {}
        self.labels_layer = None
        self._watched_audit_panels: list = []
        self._selecting = False
        self._highlight = None
        self._scatter = None
        self._colorbar = None
        self._placed = False
        self._build_ui()
        self.labels_picker.layer_changed.connect(self._on_labels_changed)
        self._on_labels_changed(self.labels_picker.layer())
        self._refresh_buttons()

    # ================================================================== UI
    def _build_ui(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.picker = ImageLayersPicker(self.viewer, self)
        self.labels_picker = LabelsLayerPicker(self.viewer, self)
        data_box = QGroupBox("Cells", self)
        form = QFormLayout(data_box)
        form.addRow("Stains", self.picker)
        form.addRow("Labels", self.labels_picker)

        # the same panel (and trust dialog) as the Audit and Compare docks; the Audit dock's model is used
        # when none is loaded here
        self.model_panel = ModelPanel(self.picker, self, title="Model")
        self.model_panel.model_changed.connect(self._on_own_model)
        self.model_label = QLabel("No model here: 'Compute profiles' uses the Audit dock's model.", self)
        self.model_label.setWordWrap(True)
        self.layer_combo = QComboBox(self)
        self.layer_combo.setToolTip("Layer whose output, averaged over z, y, x, is each cell's profile.")
        layer_box = QGroupBox("Profile", self)
        lform = QFormLayout(layer_box)
        lform.addRow(self.model_label)
        lform.addRow("Feature layer", self.layer_combo)

        buttons = QHBoxLayout()
        self.compute_button = QPushButton("Compute profiles", self)
        self.compute_button.setToolTip("Features + Grad-CAMO of every cell, sphered, then UMAP (first UMAP: ~1 min).")
        self.compute_button.clicked.connect(lambda: self.compute())
        self.load_button = QPushButton("Load table…", self)
        self.load_button.setToolTip("cells.parquet or umap.parquet written by 'gradcamo profile'.")
        self.load_button.clicked.connect(self._load_dialog)
        buttons.addWidget(self.compute_button)
        buttons.addWidget(self.load_button)

        view = QFormLayout()
        self.color_combo = QComboBox(self)
        self.color_combo.setToolTip("Only columns whose values differ between the cells are offered.")
        self.color_combo.currentTextChanged.connect(lambda _: self._draw())
        self.image_combo = QComboBox(self)
        self.image_combo.setToolTip("Rows of a loaded table that belong to the labels layer's image.")
        self.image_combo.currentTextChanged.connect(lambda _: self._draw())
        view.addRow("Colour by", self.color_combo)
        view.addRow("Image", self.image_combo)

        self.figure = Figure(figsize=(4, 3.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.axes = self.figure.add_subplot(111)
        self.canvas.mpl_connect("pick_event", self._on_pick)
        self.panel = JobPanel(self)

        from napari_gradcamo._qt.profile_metrics import ProfileMetricsPanel

        self.metrics_panel = ProfileMetricsPanel(self)
        # settings and results scroll on their own; the run strip between them stays in view on a small screen
        layout = QVBoxLayout(self)
        layout.addWidget(_scrolling(self, data_box, self.model_panel, layer_box), 2)
        layout.addLayout(buttons)
        layout.addWidget(self.panel)
        layout.addWidget(_scrolling(self, view, self.canvas, self.metrics_panel), 5)
        self._draw()

    def _refresh_buttons(self, *args) -> None:
        """Compute needs a labels layer and a model: this dock's, or the one loaded in the Audit dock."""
        self._watch_audit_docks()
        running = self.job is not None and self.job.running
        has_model = self.model_panel.bundle is not None or audit_dock_bundle(self.viewer) is not None
        self.compute_button.setEnabled(not running and has_model and self.labels_layer is not None)
        self.compute_button.setToolTip(
            "Features + Grad-CAMO of every cell, sphered, then UMAP (first UMAP: ~1 min)." if has_model else
            "Load a model here, or in the Audit dock (its model is used when none is loaded here).")
        self.load_button.setEnabled(not running)

    def _watch_audit_docks(self) -> None:
        """Follow the model of every open Audit dock, so 'Compute profiles' is enabled as soon as one has a model."""
        from napari_gradcamo._qt.audit_widget import AuditWidget

        docks = getattr(getattr(self.viewer, "window", None), "dock_widgets", {}) or {}
        for dock in docks.values():
            panel = getattr(dock, "model_panel", None) if isinstance(dock, AuditWidget) else None
            if panel is not None and all(panel is not seen for seen in self._watched_audit_panels):
                panel.model_changed.connect(self._refresh_buttons)
                self._watched_audit_panels.append(panel)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._refresh_buttons()
        if not self._placed:
            self._placed = share_tab_with_audit_dock(self) or self._placed

    def enterEvent(self, event) -> None:  # an Audit dock opened after this one: seen before Compute is clicked
        super().enterEvent(event)
        self._refresh_buttons()

    # ================================================================== model
    def load_model(self, path, background: bool = False) -> bool:
        """Load a checkpoint into this dock's model panel (asking first if it names its own code to run;
        ``background``: in a worker, as the Checkpoint combo and Open… do)."""
        return self.model_panel.load_model(path, background=background)

    def _on_own_model(self, bundle) -> None:
        self.use_bundle(bundle, f"{self.model_panel.model_name} (loaded here)")

    def use_audit_model(self) -> bool:
        """Take the model loaded in the Audit dock (no second copy is read from disk)."""
        bundle = audit_dock_bundle(self.viewer)
        if bundle is None:
            self.panel.say("No model is loaded in the Audit dock: load one there, or here.", error=True)
            return False
        return self.use_bundle(bundle, f"from the Audit dock ({Path(str(bundle.source or 'model')).name})")

    def use_bundle(self, bundle, name: str) -> bool:
        """Profile with ``bundle``: fill the feature-layer menu."""
        from napari_gradcamo.models.layers import list_target_layers
        from napari_gradcamo.profiles.extract import default_feature_layer

        self.bundle = bundle
        meta = bundle.metadata
        layers = [l for l in list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
                  if np.prod(l.output_shape[1:]) > 1]
        default = default_feature_layer(bundle.model, meta.crop_shape, len(meta.channel_names))
        self.layer_combo.clear()
        for info in layers:
            self.layer_combo.addItem(info.label, info.name)
        names = [info.name for info in layers]
        if default in names:
            self.layer_combo.setCurrentIndex(names.index(default))
        self.model_label.setText(f"Model {name}: {bundle.describe()}")
        self._refresh_buttons()
        return True

    def feature_layer(self) -> str | None:
        return self.layer_combo.currentData()

    # ================================================================== compute / load
    def compute(self, seed: int = 0) -> bool:
        """Profile every cell of the labels layer with this dock's model, else the Audit dock's."""
        layer = self.labels_layer
        own = self.model_panel.bundle
        if own is None:
            current = audit_dock_bundle(self.viewer)
            if current is not None and current is not self.bundle:
                self.use_audit_model()
        if self.bundle is None or layer is None:
            self.panel.say("Load a model (here or in the Audit dock) and choose a labels layer first.", error=True)
            return False
        try:
            image = self.picker.image()
            labels = np.asarray(L.labels_volume(layer))
            channel_map = self.model_panel.channel_map() if own is not None else None
        except ValueError as error:
            self.panel.say(str(error), error=True)
            return False
        cam_layer = self.model_panel.target_layer.currentData() if own is not None else None
        self.panel.start("Profiles: features and Grad-CAMO per cell…", _profile_job, image, labels, self.bundle,
                         self.feature_layer(), seed, channel_map, cam_layer, on_return=self._on_computed, on_error=self._on_error, on_finished=self._refresh_buttons)
        self._refresh_buttons()
        return True

    def _on_computed(self, result) -> None:
        if result is None:
            self.panel.end("Cancelled; no profiles.")
            return
        table, info = result
        source = self.labels_layer.name if self.labels_layer is not None else ""
        table = table.assign(image=source)
        self.set_table(table, info)
        status, details = plain_summary(len(table), info)
        self.panel.end(status)
        self.panel.status.setToolTip(details)

    def _on_error(self, error) -> None:
        self.panel.end(f"Profiles failed: {error}", error=True)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Profiles table", "", "Parquet (*.parquet)")
        if path:
            self.load_table(path)

    def load_table(self, path) -> bool:
        try:
            table = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises several types
            self.panel.say(f"Cannot read {Path(str(path)).name}: {error}", error=True)
            return False
        missing = [c for c in ("label", "umap_1", "umap_2") if c not in table.columns]
        if missing:
            self.panel.say(f"{Path(str(path)).name} lacks {', '.join(missing)}; load a table from 'gradcamo profile'.",
                           error=True)
            return False
        self.set_table(table, {"source": str(path)})
        self.metrics_panel.table_loaded(path)
        self.panel.say(f"Loaded {len(table)} cells from {Path(str(path)).name}.")
        return True

    def set_table(self, table: pd.DataFrame, info: dict | None = None) -> None:
        self.table = table.reset_index(drop=True)
        self.info = dict(info or {})
        images = sorted(set(self.table["image"].astype(str))) if "image" in self.table.columns else []
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems([ALL_IMAGES] + images if len(images) > 1 else images or [ALL_IMAGES])
        self.image_combo.blockSignals(False)
        self.refresh_color_choices()

    def refresh_color_choices(self, prefer: str | None = None) -> None:
        """Offer the table's columns that tell cells apart; keep (or take ``prefer`` as) the choice; redraw."""
        choices = color_choices(self.table) or ["gradcamo"]
        current = prefer or self.color_combo.currentText()
        self.color_combo.blockSignals(True)
        self.color_combo.clear()
        self.color_combo.addItems(choices)
        self.color_combo.setCurrentText(current if current in choices else choices[0])
        self.color_combo.blockSignals(False)
        self._draw()

    # ================================================================== linking
    def linked_rows(self) -> np.ndarray:
        """Row indices of the table that belong to the labels layer (the linked image's rows)."""
        if self.table is None:
            return np.zeros(0, int)
        chosen = self.image_combo.currentText()
        if chosen and chosen != ALL_IMAGES and "image" in self.table.columns:
            return np.flatnonzero((self.table["image"].astype(str) == chosen).to_numpy())
        return np.arange(len(self.table))

    def rows_of_label(self, label: int) -> np.ndarray:
        rows = self.linked_rows()
        return rows[(self.table["label"].to_numpy()[rows] == int(label))]

    def select_point(self, row: int, center: bool = True) -> int | None:
        """Select the cell of table row ``row`` in the labels layer (what a click on its point does)."""
        if self.table is None or self.labels_layer is None or row not in set(self.linked_rows().tolist()):
            return None
        label = int(self.table["label"].iat[row])
        self._selecting = True
        try:
            self.labels_layer.selected_label = label
            if center and {"centroid_z", "centroid_y", "centroid_x"} <= set(self.table.columns):
                r = self.table.iloc[row]
                L.focus_on(self.viewer, self.labels_layer, (r["centroid_z"], r["centroid_y"], r["centroid_x"]))
        finally:
            self._selecting = False
        self.highlight_label(label)
        return label

    def _on_pick(self, event) -> None:
        if event.artist is not self._scatter or not len(event.ind):
            return
        linked = self.linked_rows()
        self.select_point(int(linked[int(event.ind[0])]))

    def highlight_label(self, label: int | None) -> None:
        """Ring the point(s) of ``label`` (None or 0: no ring)."""
        self.highlighted = [] if not label or self.table is None else self.rows_of_label(int(label)).tolist()
        if self._highlight is not None:
            xy = self.table.loc[self.highlighted, ["umap_1", "umap_2"]].to_numpy() if self.highlighted else np.zeros((0, 2))
            self._highlight.set_offsets(xy)
            self.canvas.draw_idle()

    def _on_labels_changed(self, layer) -> None:
        old = self.labels_layer
        if old is not None:
            try:
                old.events.selected_label.disconnect(self._on_selected_label)
            except (TypeError, ValueError, RuntimeError):
                pass
            if self._on_canvas_click in old.mouse_drag_callbacks:
                old.mouse_drag_callbacks.remove(self._on_canvas_click)
        self.labels_layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self._on_selected_label)
            layer.mouse_drag_callbacks.append(self._on_canvas_click)
        self._refresh_buttons()

    @guarded
    def _on_selected_label(self, event=None) -> None:
        if self._selecting or self.labels_layer is None:
            return
        self.highlight_label(int(self.labels_layer.selected_label))

    def _on_canvas_click(self, layer, event):
        """A click on a cell (pan/zoom or pick mode) selects it, which rings its point."""
        if event.type != "mouse_press" or str(layer.mode) not in ("pan_zoom", "pick", "transform"):
            return
        value = layer.get_value(event.position, view_direction=event.view_direction,
                                dims_displayed=event.dims_displayed, world=True)
        if isinstance(value, tuple):
            value = value[-1]
        if value is not None and int(value) > 0:
            layer.selected_label = int(value)

    # ================================================================== drawing
    def _draw(self) -> None:
        ax = self.axes
        if self._colorbar is not None:
            self._colorbar.remove()
            self._colorbar = None
        ax.clear()
        self._scatter = self._highlight = None
        self.highlighted = []
        if self.table is None or "umap_1" not in self.table.columns:
            ax.text(0.5, 0.5, "Compute profiles or load a table", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            self.canvas.draw_idle()
            return
        ax.set_axis_on()
        table = self.table
        linked = self.linked_rows()
        key = self.color_combo.currentText()
        self._scatter, self._colorbar = draw_points(self.figure, ax, table, linked, key)
        self._highlight = ax.scatter([], [], s=140, facecolors="none", edgecolors="red", linewidths=2, zorder=3)
        if self.labels_layer is not None and int(self.labels_layer.selected_label) > 0:
            self.highlight_label(int(self.labels_layer.selected_label))
        self.canvas.draw_idle()
