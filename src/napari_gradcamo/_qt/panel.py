"""A run/cancel/progress strip shared by the widgets, mirrored in napari's activity dock."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

ERROR_STYLE = "color: #ff6b6b;"
OK_STYLE = ""


class JobPanel(QWidget):
    """Progress bar, Cancel button and a status line; :meth:`begin` / :meth:`step` / :meth:`end`."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop after the current step; finished results are kept.")
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(self.status.textInteractionFlags())
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self._napari_bar = None
        self._started = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def begin(self, description: str) -> None:
        self._started = time.perf_counter()
        self.progress.setRange(0, 0)  # busy until the first step reports a total
        self.cancel_button.setEnabled(True)
        self.say(description)
        try:
            from napari.utils import progress as napari_progress

            self._napari_bar = napari_progress(total=0, desc=description)
        except Exception:  # the activity dock is a nicety; never fail a run for it
            self._napari_bar = None

    def step(self, done: int, total: int, message: str = "") -> None:
        total = max(int(total), 1)
        self.progress.setRange(0, total)
        self.progress.setValue(min(int(done), total))
        if message:
            self.say(message)
        bar = self._napari_bar
        if bar is not None:
            try:
                bar.total = total
                bar.n = min(int(done), total)
                if message:
                    bar.set_description(message)
                bar.refresh()
            except Exception:
                pass

    def end(self, message: str, error: bool = False) -> None:
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0 if error else 1)
        self.say(message, error)
        bar, self._napari_bar = self._napari_bar, None
        if bar is not None:
            try:
                bar.close()
            except Exception:
                pass

    def say(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setStyleSheet(ERROR_STYLE if error else OK_STYLE)
