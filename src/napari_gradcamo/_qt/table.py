"""The live results table: a Qt model over the features DataFrame, a filtering proxy, and a view.

Built to stay responsive with 10 000+ rows: the model keeps one numpy array per column and formats
only the cells Qt asks for; sorting is one vectorised pandas sort in the source model (the proxy
forwards ``sort``), and filtering evaluates the filter once per table change into a boolean mask
that ``filterAcceptsRow`` only looks up.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QItemSelectionModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo.audit.labels_features import INDEX, OVERRIDE
from napari_gradcamo.output import results

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
LABEL_ROLE = Qt.ItemDataRole.UserRole + 2
TEXT_COLUMNS = ("label", "predicted_class", "target_class", "status", "reason", "cam_method", "target_layer")
FIRST_COLUMNS = ("label", "flagged", "gradcamo", "chance", "predicted_class", "probability", "target_class")


def display_columns(table: pd.DataFrame) -> list[str]:
    """Schema columns (flag and score first), then hand flags and other tools' columns; never ``index``."""
    p = results.PROBABILITY_PREFIX
    names = [c[len(p):] for c in table.columns if isinstance(c, str) and c.startswith(p)]
    schema = results.column_order(names)
    ordered = [c for c in FIRST_COLUMNS if c in table] + [c for c in schema if c in table and c not in FIRST_COLUMNS]
    rest = [c for c in table.columns if c not in ordered and c != INDEX]
    return ordered + rest


def _format(value, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        if column == "volume_voxels" or column.startswith("centroid"):
            return f"{value:.1f}" if column.startswith("centroid") else f"{value:.0f}"
        return f"{value:.3f}"
    return str(value)


class ResultsModel(QAbstractTableModel):
    """Read-only view of a features table; flag check boxes emit :attr:`flag_toggled` (the widget edits)."""

    flag_toggled = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._table = pd.DataFrame({"label": pd.Series(dtype="int64")})
        self._columns: list[str] = ["label"]
        self._arrays: list[np.ndarray] = [np.zeros(0, np.int64)]
        self._labels = np.zeros(0, np.int64)
        self._sort: tuple[str, bool] | None = None  # (column, ascending)
        self._colors: dict = {}
        self.version = 0

    # -- data -------------------------------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        """The table in display (sorted) order."""
        return self._table

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def set_table(self, table: pd.DataFrame | None, colors: dict | None = None) -> None:
        """Show ``table``. Same columns and rows in the same order (an audit filling in scores): the cells
        change in place (``dataChanged``), so selection and scrolling stay; otherwise the model resets."""
        table = table if table is not None and "label" in table else pd.DataFrame({"label": pd.Series(dtype="int64")})
        columns = display_columns(table)
        ordered = self._sorted(table.reset_index(drop=True))
        labels = ordered["label"].to_numpy(dtype=np.int64)
        in_place = columns == self._columns and np.array_equal(labels, self._labels) and len(labels) > 0
        if not in_place:
            self.beginResetModel()
        self._columns = columns
        self._colors = colors or {}
        self._table = ordered
        self._refresh_arrays()
        self.version += 1
        if in_place:
            self.dataChanged.emit(self.index(0, 0), self.index(len(labels) - 1, len(columns) - 1))
        else:
            self.endResetModel()

    def _refresh_arrays(self) -> None:
        self._arrays = [self._table[c].to_numpy() for c in self._columns]
        self._labels = self._table["label"].to_numpy(dtype=np.int64)

    def _sorted(self, table: pd.DataFrame) -> pd.DataFrame:
        if self._sort is None or self._sort[0] not in table:
            return table
        column, ascending = self._sort
        try:
            return table.sort_values(column, ascending=ascending, kind="stable", na_position="last").reset_index(drop=True)
        except TypeError:  # mixed types: sort by their text
            key = table[column].astype(str)
            return table.iloc[np.argsort(key.to_numpy(), kind="stable")[:: 1 if ascending else -1]].reset_index(drop=True)

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        if column >= len(self._columns):
            return
        self._sort = None if column < 0 else (self._columns[column], order == Qt.SortOrder.AscendingOrder)
        self.beginResetModel()
        self._table = self._sorted(self._table) if self._sort else self._table.sort_values("label", kind="stable").reset_index(drop=True)
        self._refresh_arrays()
        self.version += 1
        self.endResetModel()

    def row_of(self, label: int) -> int | None:
        hits = np.nonzero(self._labels == int(label))[0]
        return int(hits[0]) if len(hits) else None

    # -- Qt API -----------------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._labels)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._columns)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(self._columns):
            column = self._columns[section]
            if role == Qt.ItemDataRole.DisplayRole:
                return column
            if role == Qt.ItemDataRole.ToolTipRole:
                if column.startswith(results.PROBABILITY_PREFIX):
                    return f"probability of class {column[len(results.PROBABILITY_PREFIX):]}"
                if column == OVERRIDE:
                    return "set by hand: 'flagged' or 'not flagged' overrides the threshold"
                return results.SCHEMA.get(column, "")
        if orientation == Qt.Orientation.Vertical and role == Qt.ItemDataRole.DisplayRole:
            return str(section + 1)
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row, col = index.row(), index.column()
        column = self._columns[col]
        value = self._arrays[col][row]
        if role == Qt.ItemDataRole.DisplayRole:
            return "" if column == "flagged" else _format(value, column)
        if role == Qt.ItemDataRole.CheckStateRole and column == "flagged":
            return Qt.CheckState.Checked if bool(value) else Qt.CheckState.Unchecked
        if role == SORT_ROLE:
            return value.item() if hasattr(value, "item") else value
        if role == LABEL_ROLE:
            return int(self._labels[row])
        if role == Qt.ItemDataRole.DecorationRole and column == "label":
            rgba = self._colors.get(int(self._labels[row]))
            if rgba is not None:
                return QColor.fromRgbF(*[float(v) for v in rgba[:3]], 1.0)
        if role == Qt.ItemDataRole.ToolTipRole and column in ("flagged", "label"):
            return "tick or untick to flag this cell by hand"
        if role == Qt.ItemDataRole.TextAlignmentRole and column not in TEXT_COLUMNS:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def flags(self, index):
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.isValid() and self._columns[index.column()] == "flagged":
            base |= Qt.ItemFlag.ItemIsUserCheckable
        return base

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        if index.isValid() and role == Qt.ItemDataRole.CheckStateRole and self._columns[index.column()] == "flagged":
            self.flag_toggled.emit(int(self._labels[index.row()]))
            return True
        return False


class ResultsProxy(QSortFilterProxyModel):
    """Filters rows by a text (substring of the text columns, or a pandas expression such as
    ``gradcamo < 0.3 and predicted_class == 'treated'``) and by 'flagged only'. Sorting is the source's."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._flagged_only = False
        self._mask: np.ndarray | None = None
        self._mask_version = -1
        self.error = ""

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        self.sourceModel().sort(column, order)

    def set_text(self, text: str) -> None:
        self._text = text.strip()
        self._mask_version = -1
        self.invalidateFilter()

    def set_flagged_only(self, on: bool) -> None:
        self._flagged_only = bool(on)
        self._mask_version = -1
        self.invalidateFilter()

    def _compute_mask(self) -> np.ndarray:
        model: ResultsModel = self.sourceModel()
        table = model.table
        keep = np.ones(len(table), bool)
        self.error = ""
        if self._flagged_only and "flagged" in table:
            keep &= table["flagged"].to_numpy(dtype=bool)
        text = self._text
        if text:
            if any(op in text for op in ("<", ">", "==", "!=")):
                try:
                    hit = table.eval(text)
                    keep &= np.asarray(hit, dtype=bool).reshape(-1) if np.ndim(hit) else bool(hit)
                except Exception as error:  # a half-typed expression: show why, keep all rows
                    self.error = f"filter not understood: {error}"
            else:
                needle = text.lower()
                hit = np.zeros(len(table), bool)
                for column in TEXT_COLUMNS:
                    if column in table:
                        hit |= table[column].astype(str).str.lower().str.contains(needle, regex=False).to_numpy()
                keep &= hit
        return keep

    def filterAcceptsRow(self, source_row: int, source_parent) -> bool:
        model: ResultsModel = self.sourceModel()
        if self._mask_version != model.version or self._mask is None or len(self._mask) != model.rowCount():
            self._mask = self._compute_mask()
            self._mask_version = model.version
        return bool(self._mask[source_row]) if source_row < len(self._mask) else True


class ResultsTable(QWidget):
    """Filter box + 'flagged only' + the table; emits :attr:`label_selected` when the user picks a row."""

    label_selected = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = ResultsModel(self)
        self.proxy = ResultsProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText("filter: text, or e.g. gradcamo < 0.3 and predicted_class == 'treated'")
        self.filter_edit.setClearButtonEnabled(True)
        self.flagged_only = QCheckBox("flagged only", self)
        self.view = QTableView(self)
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.model.sort(-1)  # label order until the user clicks a header
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.verticalHeader().setDefaultSectionSize(20)
        self.view.verticalHeader().setVisible(False)
        self.view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.view.horizontalHeader().setDefaultSectionSize(80)
        self.view.setMinimumHeight(100)  # 4 rows: the dock's settings stay in view on a 1366×768 screen
        top = QHBoxLayout()
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.flagged_only)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        self._current: int | None = None
        self._just_emitted: int | None = None
        self._quiet = False
        self.filter_edit.textChanged.connect(self._on_filter)
        self.flagged_only.toggled.connect(self.proxy.set_flagged_only)
        self.view.selectionModel().currentRowChanged.connect(self._on_current)
        self.view.clicked.connect(self._on_clicked)
        self.model.modelReset.connect(self._restore)
        self.model.modelReset.connect(self._fit_headers)
        self._fitted: set[str] = set()

    # -- public -----------------------------------------------------------------------------
    def set_table(self, table: pd.DataFrame | None, colors: dict | None = None) -> None:
        self._quiet = True
        try:
            self.model.set_table(table, colors)
        finally:
            self._quiet = False

    def select_label(self, label: int | None, emit: bool = False) -> bool:
        """Make ``label``'s row current and visible; False when it has no row or the filter hides it."""
        self._current = None if label is None else int(label)
        row = None if label is None else self.model.row_of(label)
        if row is None:
            return False
        proxy_index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not proxy_index.isValid():
            return False
        self._quiet = not emit
        try:
            sm = self.view.selectionModel()
            flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
            sm.setCurrentIndex(proxy_index, flags)
            self.view.scrollTo(proxy_index, QAbstractItemView.ScrollHint.PositionAtCenter)
        finally:
            self._quiet = False
        return True

    def selected_labels(self) -> list[int]:
        rows = self.view.selectionModel().selectedRows()
        return sorted({int(self.proxy.data(i, LABEL_ROLE)) for i in rows})

    def current_label(self) -> int | None:
        return self._current

    def visible_labels(self) -> list[int]:
        return [int(self.proxy.data(self.proxy.index(r, 0), LABEL_ROLE)) for r in range(self.proxy.rowCount())]

    # -- internals --------------------------------------------------------------------------
    def _on_filter(self, text: str) -> None:
        self.proxy.set_text(text)
        self.filter_edit.setStyleSheet("border: 1px solid #e0443e;" if self.proxy.error else "")
        self.filter_edit.setToolTip(self.proxy.error)

    def _on_current(self, current, previous) -> None:
        if self._quiet or not current.isValid():
            return
        label = int(self.proxy.data(current, LABEL_ROLE))
        self._current = label
        self._just_emitted = label
        self.label_selected.emit(label)

    def _on_clicked(self, index) -> None:
        # a click on the row that is already current still means "show me this cell"
        if index.isValid():
            label = int(self.proxy.data(index, LABEL_ROLE))
            if label == self._just_emitted:
                self._just_emitted = None
            elif label == self._current:
                self.label_selected.emit(label)

    def _fit_headers(self) -> None:
        """A column new to the view gets at least its title's width ('predicted_class' was cut to
        'edicted_cl'); columns already shown keep the width the user gave them."""
        header = self.view.horizontalHeader()
        metrics = header.fontMetrics()
        for section, column in enumerate(self.model.columns):
            if column in self._fitted:
                continue
            self._fitted.add(column)
            needed = metrics.horizontalAdvance(column) + 2 * header.style().pixelMetric(
                header.style().PixelMetric.PM_HeaderMargin) + 14  # room for the sort arrow
            if header.sectionSize(section) < needed:
                header.resizeSection(section, needed)

    def _restore(self) -> None:
        if self._current is not None:
            self.select_label(self._current, emit=False)
