"""A run/cancel/progress strip shared by the widgets.

:meth:`JobPanel.start` is the one way a dock runs long work: a generator function (called with the
panel's fresh :class:`~napari_gradcamo.progress.CancelToken` as its last argument) runs under napari's
``thread_worker`` (:func:`~napari_gradcamo._qt.workers.start_job`); the panel owns the token, the
Cancel button, the progress bar and the status line, and reports errors in the dock and as a
napari notification.

The progress is not mirrored in napari's activity dock: ``napari.utils.progress`` is made for loops on
the main thread and calls ``QApplication.processEvents()`` on every update, which runs timers and canvas
redraws re-entrantly inside the update (measured: 110–200 ms blocks per update during an audit).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_gradcamo._qt.workers import default_synchronous, start_job
from napari_gradcamo.progress import CancelToken

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
        self.status.setMinimumHeight(2 * self.status.fontMetrics().lineSpacing() + 4)
        self._started = 0.0
        self.token: CancelToken | None = None
        self.job = None
        self.synchronous = default_synchronous()
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def start(self, description: str, generator_function: Callable[..., Any], *args,
              on_yield: Callable[[Any], None] | None = None, on_return: Callable[[Any], None] = lambda r: None,
              on_error: Callable[[BaseException], None] | None = None, on_finished: Callable[[], None] = lambda: None):
        """Run ``generator_function(*args, token)``; yields of ``(done, total, message)`` move the bar by default."""
        self.token = CancelToken()
        self.begin(description)
        self.job = start_job(
            generator_function, *args, self.token, synchronous=self.synchronous,
            on_yield=on_yield or (lambda update: self.step(*update)), on_return=on_return,
            on_error=on_error or (lambda error: self.end(f"Failed: {first_line(error)}", error=True)),
            on_finished=on_finished,
        )
        return self.job

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.token is not None:
            self.token.cancel()
        if self.running:
            self.say("Cancelling after the current step…")

    @property
    def cancelled(self) -> bool:
        return self.token is not None and self.token.cancelled

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def begin(self, description: str) -> None:
        self._started = time.perf_counter()
        self.progress.setRange(0, 0)  # busy until the first step reports a total
        self.cancel_button.setEnabled(True)
        self.say(description)

    def step(self, done: int, total: int, message: str = "") -> None:
        total = max(int(total), 1)
        # QProgressBar.setValue repaints at once, and a repaint in napari's window first runs a pending canvas
        # redraw: with updates off it only schedules the repaint for the event loop
        self.progress.setUpdatesEnabled(False)
        try:
            self.progress.setRange(0, total)
            self.progress.setValue(min(int(done), total))
        finally:
            self.progress.setUpdatesEnabled(True)
        if message:
            self.say(message)

    def end(self, message: str, error: bool = False) -> None:
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0 if error else 1)
        self.say(message, error)
        if error:
            notify_error(message)

    def say(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setStyleSheet(ERROR_STYLE if error else OK_STYLE)


class PanelJobs:
    """For a dock whose long work runs through its ``panel`` (a :class:`JobPanel`): the running job and the
    ``synchronous`` switch (tests run jobs inline) are the panel's."""

    panel: JobPanel

    @property
    def job(self):
        return self.panel.job

    @property
    def synchronous(self) -> bool:
        return self.panel.synchronous

    @synchronous.setter
    def synchronous(self, value: bool) -> None:
        self.panel.synchronous = bool(value)

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        self.panel.cancel()


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error message fit for a person: ANSI escapes removed, first line only, at most ``limit`` characters."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(error)).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def notify_error(message: str) -> None:
    """Show ``message`` as a napari notification too (the dock shows it already)."""
    try:
        from napari.utils.notifications import show_error
    except ImportError:
        return
    show_error(message)
