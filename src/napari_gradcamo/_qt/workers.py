"""Run the core's generators off the GUI thread (napari ``thread_worker``), or inline for tests.

Set ``widget.synchronous = True`` (or the environment variable ``NAPARI_GRADCAMO_SYNC=1`` before the
widget is made) to run every job in the calling thread: same callbacks, same order, no event loop
needed. Jobs are generator functions; each ``yield`` reaches ``on_yield`` in the GUI thread.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

SYNC_ENV = "NAPARI_GRADCAMO_SYNC"


def default_synchronous() -> bool:
    return os.environ.get(SYNC_ENV, "") not in ("", "0", "false", "False")


class Job:
    """One running job: ``quit()`` asks it to stop at its next ``yield``; ``running`` tells if it still runs."""

    def __init__(self, worker=None):
        self.worker = worker
        self._quit = False
        self.running = True

    def quit(self) -> None:
        self._quit = True
        if self.worker is not None:
            self.worker.quit()

    @property
    def quitting(self) -> bool:
        return self._quit


@contextmanager
def one_core_for_the_viewer() -> Iterator[int]:
    """Run torch on every core but one while a job computes, so napari's drawing (software OpenGL runs on
    the CPU) is not starved; yields the thread count. On 2 cores the audit itself also ran faster with
    one torch thread than with two (``benchmarks/gui_stall.py``)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    before = torch.get_num_threads()
    threads = max(1, min(before, cores - 1))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def _noop(*args) -> None:
    return None


class _Failure:
    """An exception carried out of a worker as its return value."""

    def __init__(self, error: BaseException):
        self.error = error


def _shielded(generator_function, *args):
    """Run a job, returning its exception instead of raising it.

    superqt's worker treats any ``RuntimeError`` escaping a job as "the worker was deleted" and then
    emits neither ``errored`` nor ``finished``; torch errors and our ``Cancelled`` are RuntimeErrors.
    """
    try:
        result = yield from generator_function(*args)
    except Exception as error:
        return _Failure(error)
    return result


def start_job(
    generator_function: Callable[..., Any],
    *args,
    synchronous: bool = False,
    on_yield: Callable[[Any], None] = _noop,
    on_return: Callable[[Any], None] = _noop,
    on_error: Callable[[BaseException], None] = _noop,
    on_finished: Callable[[], None] = _noop,
) -> Job:
    """Start ``generator_function(*args)``; callbacks run in the GUI thread (or inline when synchronous)."""
    if synchronous:
        job = Job()
        try:
            generator = generator_function(*args)
            while True:
                if job.quitting:
                    generator.close()
                    on_return(None)
                    break
                try:
                    value = next(generator)
                except StopIteration as stop:
                    on_return(stop.value)
                    break
                on_yield(value)
        except Exception as error:  # reported like a worker's errored signal
            on_error(error)
        finally:
            job.running = False
            on_finished()
        return job

    from napari.qt.threading import create_worker

    worker = create_worker(_shielded, generator_function, *args, _start_thread=False, _ignore_errors=True)
    job = Job(worker)

    def finished() -> None:
        job.running = False
        on_finished()

    def returned(value) -> None:
        if isinstance(value, _Failure):
            on_error(value.error)
        else:
            on_return(value)

    worker.yielded.connect(on_yield)
    worker.returned.connect(returned)
    worker.errored.connect(on_error)
    worker.aborted.connect(lambda: on_return(None))
    worker.finished.connect(finished)
    worker.start()
    return job
