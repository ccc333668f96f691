"""The model's verdict in the audit dock: does this model look at the cells?

A small panel: a button that judges the model on the dock's image, masks and model (a sample of cells, every
candidate layer, both occlusions: :func:`napari_gradcamo.audit.verdict.judge`) in the background through a
:class:`~napari_gradcamo._qt.panel.JobPanel`, and the answer per model and per class with its evidence — the
same words, numbers and rule as ``gradcamo audit``'s summary line and ``*_verdict.json``.
"""

from __future__ import annotations

from typing import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QVBoxLayout

from napari_gradcamo._qt.panel import JobPanel

#: Colour of each verdict's headline (the per-cell flag colours stay in the table and labels).
VERDICT_STYLE = {
    "looks at the cells": "color: #6fd16f; font-weight: bold;",
    "looks elsewhere": "color: #ff6b6b; font-weight: bold;",
    "inconclusive": "color: #f0c040; font-weight: bold;",
    "not assessable": "color: #b0b0b0; font-weight: bold;",
}


def _judge_job(inputs, cancel):
    """Worker side: build the image from the layers, then judge the model (cancellable between batches)."""
    import numpy as np

    from napari_gradcamo._qt import layers as L
    from napari_gradcamo.audit.verdict import judge
    from napari_gradcamo.progress import Cancelled

    image_layers, labels, bundle, settings = inputs
    yield (0, 0, "Judging the model: a sample of cells at every candidate layer, cell and context hidden…")
    labels = np.array(labels)  # a copy: the masks may be painted while the job runs
    image = L.image_from_layers(image_layers)
    try:
        return judge(image, labels, bundle, settings=settings, cancel=cancel)
    except Cancelled:
        return None


def verdict_text(report) -> tuple[str, str, str]:
    """(headline, one line per class, the full evidence) of a
    :class:`~napari_gradcamo.audit.verdict.VerdictReport`: the panel shows the first two (short enough for a
    1366×768 screen) and the third as their tooltip."""
    from napari_gradcamo.audit.verdict import CONFIDENCE

    short, full = [], []
    for name, v in report.classes.items():
        if v.causal_mean == v.causal_mean:  # not NaN
            low, high = v.causal_interval
            evidence = f"causal {v.causal_mean:+.2f} ({CONFIDENCE:.0%} {low:+.2f}..{high:+.2f}), {v.cells} cells"
            short.append(f"{name}: {v.verdict}, {evidence}")
            full.append(f"{name}: {v.verdict} — {evidence}; {v.reason}")
        else:
            short.append(f"{name}: {v.verdict}")
            full.append(f"{name}: {v.verdict} — {v.reason}")
    full.append(f"Grad-CAM read at layer {report.layer or '—'} (the layer that agrees best with occlusion).")
    full.extend(report.notes)
    return f"Verdict: {report.verdict}", "\n".join(short), "\n".join(full)


class VerdictPanel(QFrame):
    """'Judge the model' and its answer. ``inputs()`` returns (image layers, labels, bundle, settings) or
    raises a user-facing error (no model, no labels…); ``panel``: the dock's job strip, shared with the audit
    run so that only one of them runs at a time (a panel of its own when None)."""

    def __init__(self, inputs: Callable[[], tuple], panel: JobPanel | None = None, parent=None):
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)  # no title row: the table below keeps its height at 1366×768
        self._inputs = inputs
        self.report = None
        self.judge_button = QPushButton("Judge the model", self)
        self.judge_button.setToolTip("Does this model look at the cells? Sample cells, explain them at every "
                                     "candidate layer and hide the cell or its context: the causal check decides "
                                     "(docs/interpreting-scores.md).")
        self.headline = QLabel("Verdict: not judged yet.", self)
        # one line per class with its causal interval: folded by default, so the table below keeps ≥ 8 rows
        # in view at 1366×768 (issue 24); the full evidence is the tooltip of both labels
        self.details = QLabel("", self)
        self.details.setWordWrap(True)
        self.details.setVisible(False)
        self.details_button = QToolButton(self)
        self.details_button.setCheckable(True)
        self.details_button.setAutoRaise(True)
        self.details_button.setText("details")
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setToolTip("Show or hide one line per class: its verdict, causal effect, 95 % interval "
                                       "and the number of cells judged.")
        self.details_button.setEnabled(False)  # nothing to show before a verdict
        own = panel is None
        self.panel = JobPanel(self) if own else panel
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        row = QHBoxLayout()
        row.addWidget(self.judge_button)
        row.addWidget(self.headline, 1)
        row.addWidget(self.details_button)
        layout.addLayout(row)
        if own:
            layout.addWidget(self.panel)
        layout.addWidget(self.details)
        self.judge_button.clicked.connect(self.judge)
        self.details_button.toggled.connect(self.show_details)

    def show_details(self, on: bool) -> None:
        """Unfold (or fold) the per-class lines under the verdict."""
        if self.details_button.isChecked() != on:
            self.details_button.setChecked(on)  # emits toggled again, which comes back here
            return
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.details.setVisible(on)

    def judge(self) -> None:
        if self.panel.running:
            self.panel.say("A job is running in this dock; wait for it or Cancel it first.", error=True)
            return
        try:
            inputs = self._inputs()
        except Exception as error:  # noqa: BLE001 - the message names the problem and the fix
            from napari_gradcamo._qt.panel import first_line

            self.panel.end(first_line(error), error=True)
            return
        self.judge_button.setEnabled(False)
        self.panel.start("Judging the model…", _judge_job, inputs, on_return=self.show_report,
                         on_finished=lambda: self.judge_button.setEnabled(True))

    def show_report(self, report) -> None:
        if report is None:
            self.panel.end("Cancelled; no verdict.")
            return
        self.report = report
        self.panel.step(1, 1)
        headline, details, evidence = verdict_text(report)
        self.headline.setText(headline)
        self.headline.setStyleSheet(VERDICT_STYLE.get(report.verdict, ""))
        self.details.setText(details)
        for label in (self.headline, self.details):
            label.setToolTip(evidence)
        self.details_button.setEnabled(True)
        self.panel.end(f"{headline}.")  # one line: the evidence is under 'details' in the Verdict row
