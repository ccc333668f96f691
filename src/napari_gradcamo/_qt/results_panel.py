"""The audit dock's 'Results' box: threshold, colouring, legend, summary, the per-cell table and its actions."""

from __future__ import annotations

from html import escape

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
)

from napari_gradcamo._qt.table import ResultsTable
from napari_gradcamo.audit import labels_features
from napari_gradcamo.output import results


def _swatch(rgba) -> str:
    r, g, b = (int(round(255 * float(v))) for v in rgba[:3])
    return f'<span style="background-color: rgb({r},{g},{b});">{"&nbsp;" * 3}</span>'


def legend_html(legend: labels_features.Legend) -> str:
    """The legend as rich text on as few lines as the dock's width allows (the table below keeps its rows at
    1366×768): the title, colour swatches (and a score gradient with its range and the threshold)."""
    parts = [f"<b>{escape(legend.title)}:</b>"]
    if legend.gradient:
        lo, hi = legend.value_range
        bar = "".join(_swatch(c) for c in legend.gradient)
        mark = f" (threshold&nbsp;{legend.threshold:.2f})" if legend.threshold is not None else ""
        parts.append(f"{lo:.3g}&nbsp;{bar}&nbsp;{hi:.3g}{mark}")
    parts += [f"{_swatch(color)}&nbsp;{escape(text)}" for text, color in legend.swatches]
    return " &nbsp; ".join(parts)


class ResultsPanel(QGroupBox):
    """Widgets only; the audit dock connects them and feeds :meth:`show_table`."""

    def __init__(self, parent=None):
        from napari_gradcamo.audit.run import AuditSettings
        from napari_gradcamo.audit.scoring import SCORE_KINDS

        super().__init__("Results", parent)
        defaults = AuditSettings()
        self.flag_on = QComboBox(self)
        for kind, meaning in SCORE_KINDS.items():
            self.flag_on.addItem(labels_features.column_title(kind), kind)
            self.flag_on.setItemData(self.flag_on.count() - 1, meaning, Qt.ItemDataRole.ToolTipRole)
        self.flag_on.setCurrentIndex(self.flag_on.findData(defaults.flag_on))
        self.flag_on.setToolTip("The score a cell is flagged on. Normalised (0 = a uniform map) means the same for "
                                "small and large cells; the paper flags raw Grad-CAMO < 0.5.")
        self.threshold = QDoubleSpinBox(self)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setToolTip("Cells whose chosen score is below this (or undefined) are flagged.")
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.threshold_slider.setRange(0, 100)
        self._set_range(defaults.flag_on)
        self.threshold.setValue(float(defaults.threshold))
        self.color_mode = QComboBox(self)
        self.color_mode.setToolTip("Colour the cells by their flag, or by a score (colours span the scores seen).")
        self.show_all = QCheckBox("all-cells Grad-CAM layer", self)
        self.show_all.setChecked(True)
        self.show_all.setToolTip("Every audited cell's map (each scaled to its own maximum) in one layer.")
        self.legend = QLabel(self)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.summary = QLabel("", self)
        self.summary.setWordWrap(True)
        self.table = ResultsTable(self)
        self.flag_button = QPushButton("Flag / unflag", self)
        self.flag_button.setToolTip("Flag or unflag the cells selected in the table.")
        self.delete_button = QPushButton("Delete cell", self)
        self.delete_button.setToolTip("Erase the selected cells from the masks in every slice (undo brings them back).")
        self.recheck_button = QPushButton("Re-check masks", self)
        self.recheck_button.setToolTip("Compare the label image with the table (e.g. after undo) and update rows.")
        self.export_button = QPushButton("Export flagged…", self)
        self.export_button.setToolTip("Table (CSV + Parquet), one OME-TIFF per flagged cell and a PNG gallery.")
        thr_row = QHBoxLayout()
        thr_row.addWidget(QLabel("Flag if"))
        thr_row.addWidget(self.flag_on)
        thr_row.addWidget(QLabel("<"))
        thr_row.addWidget(self.threshold)
        thr_row.addWidget(self.threshold_slider, 1)
        view_row = QHBoxLayout()
        view_row.addWidget(QLabel("Colour by"))
        view_row.addWidget(self.color_mode)
        view_row.addWidget(self.show_all, 1)
        action_row = QHBoxLayout()
        for button in (self.flag_button, self.delete_button, self.recheck_button, self.export_button):
            action_row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)  # tight: every pixel here is a table row less at 1366×768
        layout.setSpacing(3)
        layout.addLayout(thr_row)
        layout.addLayout(view_row)
        layout.addWidget(self.legend)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)
        layout.addLayout(action_row)
        self.threshold.valueChanged.connect(self._sync_slider)
        self.threshold_slider.valueChanged.connect(
            lambda v: self.threshold.setValue(self._low + (self._high - self._low) * v / 100.0))
        self.flag_on.currentIndexChanged.connect(lambda _: self._set_range(self.flag_on.currentData()))
        self.set_color_modes(None)

    #: The threshold's range for each score (the slider spans it).
    RANGES = {"gradcamo": (0.0, 1.0), "normalised": (-1.0, 1.0), "lift": (0.0, 10.0)}

    def _set_range(self, kind: str) -> None:
        self._low, self._high = self.RANGES[kind]
        self.threshold.setRange(self._low, self._high)
        self._sync_slider(self.threshold.value())

    def _sync_slider(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(int(round(100 * (value - self._low) / (self._high - self._low))))
        self.threshold_slider.blockSignals(False)

    def flag_rule(self) -> labels_features.FlagRule:
        """The chosen score and threshold."""
        return labels_features.FlagRule(float(self.threshold.value()), self.flag_on.currentData())

    def color_choice(self) -> tuple[str, str]:
        """(mode, column): ('flag', '') or ('score', a score column)."""
        column = self.color_mode.currentData() or ""
        return ("score", column) if column else ("flag", "")

    def set_color_modes(self, table) -> None:
        """Offer 'flag' and every score column the table has (new score columns appear by themselves)."""
        columns = labels_features.color_columns(table)
        wanted = ["", *columns]
        have = [self.color_mode.itemData(i) or "" for i in range(self.color_mode.count())]
        if have == wanted:
            return
        current = self.color_mode.currentData() or ""
        self.color_mode.blockSignals(True)
        self.color_mode.clear()
        self.color_mode.addItem("flag", "")
        for column in columns:
            self.color_mode.addItem(labels_features.column_title(column), column)
        index = self.color_mode.findData(current) if current else 0
        self.color_mode.setCurrentIndex(max(index, 0))
        self.color_mode.blockSignals(False)

    def show_table(self, table, colors, model_name: str = "") -> None:
        """Table rows, legend and summary for ``table`` (None: no labels layer)."""
        mode, column = self.color_choice()
        self.table.set_table(table, colors)
        legend = labels_features.legend(mode, self.flag_rule(), table, column or "gradcamo")
        self.legend.setText(legend_html(legend))
        if table is None:
            self.summary.setText("")
            return
        s = results.summary(table)
        self.legend.setVisible(bool(s["cells"]))  # no colours to explain before a cell is audited: room for settings
        made_by = f" · model {model_name}" if model_name else ""
        if s["cells"]:
            self.summary.setText(
                f"{s['cells']} audited · median Grad-CAMO {s['median_gradcamo']:.3f} (chance {s['median_chance']:.3f})"
                f" · {int(table['flagged'].sum())} flagged · {s['undefined']} undefined{made_by}"
            )
        else:
            self.summary.setText(f"{len(table)} cells, none audited yet.")
