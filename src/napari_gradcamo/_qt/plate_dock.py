"""The Plate dock: open a plate run's results, see the well heatmap, pick a field and load it — image (lazily,
dask-backed), masks, Grad-CAM maps and table — into the viewer with the audit dock ready on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo.io.images import ImageError
from napari_gradcamo.plate import report, store

AUDIT_WIDGET = ("napari-gradcamo", "Grad-CAMO audit")
CELL_PX = 18


def _colour(value: float, low: float, high: float) -> QColor:
    import matplotlib

    if not np.isfinite(value):
        return QColor("#dddddd")
    r, g, b, _ = matplotlib.colormaps["viridis"]((value - low) / (high - low) if high > low else 0.5)
    return QColor.fromRgbF(r, g, b)


class PlateDock(QWidget):
    """Well heatmap (median chance-corrected Grad-CAMO) of a plate run; click a well, pick a field, load it."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.folder: Path | None = None
        self.run: dict = {}
        self.cells = pd.DataFrame()
        self.failures = pd.DataFrame()
        self.tasks: dict = {}
        self.audit_widget = None
        self._build_ui()

    def _build_ui(self) -> None:
        self.open_button = QPushButton("Open results…", self)
        self.open_button.setToolTip("The --out folder of 'gradcamo plate run' (it holds run.json).")
        self.open_button.clicked.connect(self._open_dialog)
        self.plate_combo = QComboBox(self)
        self.plate_combo.currentTextChanged.connect(lambda *_: self._fill_heatmap())
        self.summary = QLabel("No plate open.", self)
        self.summary.setWordWrap(True)
        self.summary.setToolTip(f"Chance-corrected Grad-CAMO: {report.SCORE_LABEL}")
        self.heatmap = QTableWidget(self)
        self.heatmap.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.heatmap.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.heatmap.cellClicked.connect(self._on_well_clicked)
        self.fields = QListWidget(self)
        self.fields.setMinimumHeight(3 * CELL_PX)
        self.fields.itemDoubleClicked.connect(lambda item: self.load_field(item.data(Qt.ItemDataRole.UserRole)))
        self.load_button = QPushButton("Load field", self)
        self.load_button.setToolTip("Load the chosen field's image (lazily), masks, maps and table (or double-click).")
        self.load_button.clicked.connect(self._load_current)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(QLabel("Plate:", self))
        top.addWidget(self.plate_combo, 1)
        self.plate_combo.setMinimumContentsLength(6)
        self.plate_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        content = QWidget(self)  # scrolls, rather than squeezing the heatmap, when the dock is short
        layout = QVBoxLayout(content)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.heatmap, 3)
        layout.addWidget(QLabel("Fields of the well (cells · median score · status):", self))
        layout.addWidget(self.fields, 1)
        layout.addWidget(self.load_button)
        layout.addWidget(self.status)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setMinimumHeight(22 * CELL_PX)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    # ------------------------------------------------------------------ results
    def _open_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a plate run's output folder")
        if folder:
            self.open_results(folder)

    def open_results(self, folder) -> bool:
        """Read a plate run's results (run.json, per-field tables, failures); False with the reason shown."""
        from napari_gradcamo.plate.sources import discover

        try:
            run = store.read_run(Path(folder))
            cells, failures = store.collect(Path(folder), run["fingerprint"])
            tasks = {t.field_id: t for t in discover(run["source"], run.get("layout") or None)}
        except (ImageError, OSError, ValueError) as error:
            self.status.setText(f"Cannot open {folder}: {error}")
            return False
        self.folder, self.run, self.cells, self.failures, self.tasks = Path(folder), run, cells, failures, tasks
        plates = sorted({t.plate for t in tasks.values()})
        self.plate_combo.blockSignals(True)
        self.plate_combo.clear()
        self.plate_combo.addItems(plates)
        self.plate_combo.blockSignals(False)
        self.summary.setText(f"{len(cells)} cells in {cells['field'].nunique() if len(cells) else 0} of {len(tasks)} "
                             f"fields; {len(failures)} failed.\nColour: median chance-corrected Grad-CAMO per well.")
        self._fill_heatmap()
        self.status.setText("Click a well, then pick a field.")
        return True

    def well_medians(self, plate: str) -> pd.Series:
        cells = self.cells[self.cells["plate"] == plate] if len(self.cells) else self.cells
        return cells.groupby("well")[report.SCORE].median() if len(cells) else pd.Series(dtype=float)

    def _fill_heatmap(self) -> None:
        plate = self.plate_combo.currentText()
        wells = sorted({t.well for t in self.tasks.values() if t.plate == plate})
        medians = self.well_medians(plate).reindex(wells)
        grid = report.plate_grid(medians)
        finite = grid[np.isfinite(grid)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        rows, cols = grid.shape
        self.heatmap.clear()
        self.heatmap.setRowCount(rows)
        self.heatmap.setColumnCount(cols)
        self.heatmap.setVerticalHeaderLabels(report.row_names(rows))
        self.heatmap.setHorizontalHeaderLabels([str(c + 1) for c in range(cols)])
        for well in wells:
            r, c = report.split_well(well)
            item = QTableWidgetItem("")
            item.setData(Qt.ItemDataRole.UserRole, well)
            item.setBackground(_colour(grid[r, c], low, high))
            item.setToolTip(f"{well}: median {grid[r, c]:.3f}" if np.isfinite(grid[r, c]) else f"{well}: no scores")
            self.heatmap.setItem(r, c, item)
        for axis in (self.heatmap.horizontalHeader(), self.heatmap.verticalHeader()):
            axis.setMinimumSectionSize(12)
            axis.setDefaultSectionSize(CELL_PX)
        self.heatmap.setMinimumHeight(min((rows + 2) * CELL_PX, 420))
        self.heatmap.setMinimumWidth(min((cols + 2) * CELL_PX, 480))

    def _on_well_clicked(self, row: int, column: int) -> None:
        item = self.heatmap.item(row, column)
        if item is not None:
            self.select_well(item.data(Qt.ItemDataRole.UserRole))

    def select_well(self, well: str) -> None:
        """List the fields of ``well`` (on the current plate) with their cells, median score and status."""
        plate = self.plate_combo.currentText()
        failed = set(self.failures["field"]) if len(self.failures) else set()
        self.fields.clear()
        for task in sorted((t for t in self.tasks.values() if t.plate == plate and t.well == well), key=lambda t: t.site):
            cells = self.cells[self.cells["field"] == task.field_id] if len(self.cells) else self.cells
            state = "failed" if task.field_id in failed else ("done" if len(cells) else "not done")
            median = f"{cells[report.SCORE].median():.3f}" if len(cells) else "–"
            item = QListWidgetItem(f"site {task.site} · {len(cells)} cells · {median} · {state}")
            item.setData(Qt.ItemDataRole.UserRole, task.field_id)
            self.fields.addItem(item)
        if self.fields.count():
            self.fields.setCurrentRow(0)

    def _load_current(self) -> None:
        item = self.fields.currentItem()
        if item is not None:
            self.load_field(item.data(Qt.ItemDataRole.UserRole))

    # ------------------------------------------------------------------ one field into the viewer
    def load_field(self, field_id: str) -> bool:
        """Add the field's image (dask-backed), masks with its table as features, and its maps to the audit dock."""
        from napari_gradcamo.io.lazy import open_image, open_labels

        task = self.tasks.get(field_id)
        if task is None or self.folder is None:
            self.status.setText(f"Field {field_id} is not in the open plate.")
            return False
        try:
            image = open_image(task.image, task.axes or None)
            labels = open_labels(task.image, task.masks or self._segmented_masks(task))
        except (ImageError, OSError) as error:
            self.status.setText(f"Cannot load {field_id}: {error}")
            return False
        name = field_id.replace("/", " ")
        middle = image.data[:, image.data.shape[1] // 2].compute()  # one plane per channel sets the contrast
        limits = [(float(np.percentile(p, 1)), float(max(np.percentile(p, 99.8), np.percentile(p, 1) + 1)))
                  for p in middle]
        self.viewer.add_image(image.data, channel_axis=0, name=[f"{name} {c}" for c in image.channel_names],
                              scale=image.voxel_size, contrast_limits=limits, blending="additive")
        layer = self.viewer.add_labels(labels, name=f"{name} masks", scale=image.voxel_size)
        table = self.cells[self.cells["field"] == field_id] if len(self.cells) else self.cells
        self._ready_audit(layer, table, store.read_field_maps(self.folder, task))
        self.status.setText(f"Loaded {field_id}: {len(table)} cells, image {tuple(image.data.shape)} read lazily.")
        return True

    def _segmented_masks(self, task) -> str:
        found = sorted((self.folder / "masks").glob(f"{store.safe_name(task.plate)}_{store.safe_name(task.well)}"
                                                    f"_s{int(task.site)}_*.tif")) if self.folder else []
        return str(found[-1]) if found else ""

    def _ready_audit(self, layer, table: pd.DataFrame, maps: dict) -> None:
        _, widget = self.viewer.window.add_plugin_dock_widget(*AUDIT_WIDGET)
        self.audit_widget = widget
        if self.run.get("checkpoint") and (widget.bundle is None or widget.bundle.source != self.run["checkpoint"]):
            widget.load_model(self.run["checkpoint"])
        widget.set_threshold(float(self.run.get("settings", {}).get("threshold", 0.5)))
        widget.labels_picker.set_layer(layer)
        widget.add_maps(layer, maps)
        layer.features = table.drop(columns=[c for c in ("plate", "well", "site", "field") if c in table]
                                    ).reset_index(drop=True)
        widget.select_label(int(table["label"].iloc[0]) if len(table) else 0, center=False)
