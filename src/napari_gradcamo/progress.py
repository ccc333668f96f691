"""Progress reporting and cancellation shared by every long-running step.

Long steps accept ``progress(done, total, message)`` and a :class:`CancelToken`; the CLI passes a
tqdm bar, napari passes a ``thread_worker`` signal, tests pass nothing.
"""

from __future__ import annotations

import threading
from typing import Callable, Generator, Optional, TypeVar

ProgressCallback = Callable[[int, int, str], None]
T = TypeVar("T")
#: A long step written as a generator: yields ``(done, total, message)``, returns its result. napari runs it
#: in a ``thread_worker`` (each yield a progress update and a chance to stop); :func:`drain` runs it inline.
Steps = Generator[tuple[int, int, str], None, T]


class Cancelled(Exception):
    """Raised inside a long step when the user cancelled it; finished work is kept by the caller."""


class CancelToken:
    """A thread-safe cancel flag that long steps poll between units of work.

    Pass one to :func:`~napari_gradcamo.audit.run.run_audit`, :func:`~napari_gradcamo.segment.cellpose.segment`
    or an export, and call :meth:`cancel` from another thread: the step stops after its current unit (a
    batch, a plane, a cell) and keeps what finished.

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> token = ng.CancelToken()
    >>> token.cancelled
    False
    >>> token.cancel()
    >>> token.cancelled
    True
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self, what: str = "the run") -> None:
        if self._event.is_set():
            raise Cancelled(f"Cancelled {what}; results finished before the cancel are kept.")


def report(progress: Optional[ProgressCallback], done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, message)


def check(cancel: Optional[CancelToken], what: str = "the run") -> None:
    """Raise :class:`Cancelled` if ``cancel`` was set."""
    if cancel is not None:
        cancel.raise_if_cancelled(what)


def drain(steps: Steps[T], progress: Optional[ProgressCallback] = None) -> T:
    """Run a step generator to its end, handing each ``(done, total, message)`` to ``progress``."""
    while True:
        try:
            done, total, message = next(steps)
        except StopIteration as stop:
            return stop.value
        report(progress, done, total, message)
