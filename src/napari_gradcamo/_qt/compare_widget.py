"""'Compare models': audit the cells of the audit dock's labels layer with a second checkpoint and put
both scores side by side: a table (A, B, B − A) and a scatter of A against B coloured by class; a
click on a point goes to the cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtWidgets import QFormLayout, QGroupBox, QPushButton, QScrollArea, QTableView, QVBoxLayout, QWidget

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt.model_panel import ModelPanel
from napari_gradcamo._qt.panel import JobPanel, first_line
from napari_gradcamo._qt.pickers import ImageLayersPicker, LabelsLayerPicker, guarded
from napari_gradcamo.audit import labels_features
from napari_gradcamo.audit.compare import compare_tables
from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.io.images import ImageError


def _audit_b(image_layers, labels, bundle, settings, cancel):
    """Worker: the second model's audit, one batch at a time."""
    from napari_gradcamo.audit.run import iter_audit

    image = L.image_from_layers(image_layers)
    rows = []
    for batch in iter_audit(image, labels, bundle, settings, None, cancel):
        rows.append(batch.rows)
        yield batch.done, batch.total, f"model B: {batch.done}/{batch.total} cells"
    return pd.concat(rows, ignore_index=True) if rows else None


def score_limits(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    """Axis limits (the same on both axes) spanning the finite scores with a margin of ``pad`` of the range
    (scores of 0.03–0.46 no longer crowd a corner of fixed 0–1 axes); (0, 1) when there is none."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    margin = pad * (hi - lo) if hi > lo else 0.05
    return lo - margin, hi + margin


def _scrolling(content, parent) -> QScrollArea:
    scroll = QScrollArea(parent)
    scroll.setWidgetResizable(True)
    scroll.setWidget(content)
    scroll.setMinimumHeight(80)
    return scroll


class CompareWidget(QWidget):
    """Model A = the rows already in the labels layer's table; model B = a second checkpoint audited here."""

    def __init__(self, napari_viewer, parent=None):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtGui import QStandardItemModel

        super().__init__(parent)
        self.viewer = napari_viewer
        self.comparison: pd.DataFrame | None = None
        self.picker = ImageLayersPicker(napari_viewer, self)
        self.labels_picker = LabelsLayerPicker(napari_viewer, self)
        data = QGroupBox("Cells (model A = the audit already in the table)", self)
        form = QFormLayout(data)
        form.addRow("Image channels", self.picker)
        form.addRow("Cell masks", self.labels_picker)
        self.model_b = ModelPanel(self.picker, self, title="Model B")
        self.run_button = QPushButton("Audit with model B and compare", self)
        self.panel = JobPanel(self)
        self.figure = Figure(figsize=(4, 3.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.canvas.mpl_connect("pick_event", self._on_pick)
        self.table_model = QStandardItemModel(self)
        self.table = QTableView(self)
        self.table.setModel(self.table_model)
        self.table.setMinimumHeight(120)
        settings = QWidget(self)
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(0, 0, 0, 0)
        settings_layout.addWidget(data)
        settings_layout.addWidget(self.model_b)
        shown = QWidget(self)
        shown_layout = QVBoxLayout(shown)
        shown_layout.setContentsMargins(0, 0, 0, 0)
        shown_layout.addWidget(self.canvas, 3)
        shown_layout.addWidget(self.table, 2)
        # settings and results scroll on their own (the dock's minimum height stays small, so napari's window
        # is never pushed past the screen); the run strip between them stays in view
        layout = QVBoxLayout(self)
        layout.addWidget(_scrolling(settings, self), 2)
        layout.addWidget(self.run_button)
        layout.addWidget(self.panel)
        layout.addWidget(_scrolling(shown, self), 5)
        self.run_button.clicked.connect(self.run)
        self._scatter_labels = np.zeros(0, np.int64)
        self._placed = False

    def showEvent(self, event) -> None:
        """Beside an open audit dock, take a tab next to it (both stacked are taller than a 1366×768 screen)."""
        from napari_gradcamo._qt.profile_plot import share_tab_with_audit_dock

        super().showEvent(event)
        if not self._placed:
            self._placed = share_tab_with_audit_dock(self)

    def run(self) -> bool:
        layer = self.labels_picker.layer()
        try:
            if self.model_b.bundle is None:
                raise ImageError("Load model B first (Checkpoint → a demo model or Open…).")
            if layer is None:
                raise ImageError("Choose the Labels layer audited with model A.")
            table_a = labels_features.ensure_schema(layer.features)
            if not (table_a["status"] == "audited").any():
                raise ImageError("The labels layer has no audited cells yet: run the audit dock (model A) first.")
            layers = self.picker.layers()
            if not layers:
                raise ImageError("Tick the image layers that hold the stains.")
            settings = self.model_b.audit_settings(labels_features.FlagRule(AuditSettings().threshold, AuditSettings().flag_on))
        except ImageError as error:
            self.panel.end(str(error), error=True)
            return False
        labels = np.array(L.labels_volume(layer), copy=True)
        name_a = ", ".join(sorted({m for m in table_a.get(labels_features.MODEL, []) if m})) or "A"
        self.panel.start("Auditing with model B…", _audit_b, layers, labels, self.model_b.bundle, settings,
                         on_return=lambda rows: self._show(table_a, rows, name_a),
                         on_error=lambda e: self.panel.end(f"Model B failed: {first_line(e)}", error=True))
        return True

    @guarded
    def _show(self, table_a, rows_b, name_a: str) -> None:
        if rows_b is None:
            self.panel.end("Cancelled: nothing to compare.")
            return
        rows_b = rows_b.assign(status="audited")
        self.comparison = compare_tables(table_a, rows_b, name_a, self.model_b.model_name)
        self._fill_table(self.comparison)
        self._plot(self.comparison)
        d = self.comparison["difference"]
        self.panel.end(f"{len(d)} cells · median Grad-CAMO A {self.comparison['gradcamo_A'].median():.3f}, "
                       f"B {self.comparison['gradcamo_B'].median():.3f} · median B − A {d.median():+.3f}")

    def _fill_table(self, table: pd.DataFrame) -> None:
        from qtpy.QtGui import QStandardItem

        columns = ["label", "gradcamo_A", "gradcamo_B", "difference", "predicted_class_A", "predicted_class_B"]
        self.table_model.clear()
        self.table_model.setHorizontalHeaderLabels(columns)
        for _, row in table.iterrows():
            self.table_model.appendRow([QStandardItem(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]))
                                        for c in columns])

    def _plot(self, table: pd.DataFrame) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        classes = sorted(set(table["predicted_class_A"].astype(str)))
        colors = {c: f"C{i}" for i, c in enumerate(classes)}
        lo, hi = score_limits(table[["gradcamo_A", "gradcamo_B"]].to_numpy(float))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        self._scatter = ax.scatter(table["gradcamo_A"], table["gradcamo_B"], picker=True, pickradius=4, s=18,
                                   c=[colors[str(c)] for c in table["predicted_class_A"]])
        for c in classes:
            ax.scatter([], [], color=colors[c], label=f"{c} (model A's class)")
        ax.legend(fontsize=7, loc="upper left")
        names = (table["model_A"].iloc[0], table["model_B"].iloc[0]) if len(table) else ("A", "B")
        ax.set_xlabel("Grad-CAMO, model A", fontsize=8)
        ax.set_ylabel("Grad-CAMO, model B", fontsize=8)
        ax.set_title(f"A = {names[0]}, B = {names[1]}\nabove the line: B looks more at the cell", fontsize=8)
        self._scatter_labels = table["label"].to_numpy(dtype=np.int64)
        self.canvas.draw_idle()

    @guarded
    def _on_pick(self, event) -> None:
        if not len(event.ind):
            return
        self.go_to(int(self._scatter_labels[int(event.ind[0])]))

    def go_to(self, label: int) -> None:
        """Select ``label`` in the labels layer and move the view to it."""
        layer = self.labels_picker.layer()
        if layer is None or self.comparison is None:
            return
        row = labels_features.row_of(labels_features.ensure_schema(layer.features), label)
        layer.selected_label = label
        if row is not None:
            L.focus_on(self.viewer, layer, (row["centroid_z"], row["centroid_y"], row["centroid_x"]))
