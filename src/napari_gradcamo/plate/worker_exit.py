"""A dask worker plugin that lets a plate's worker processes exit promptly when the cluster closes.

A worker that has imported torch and pytorch-grad-cam holds millions of objects; the interpreter's last
garbage collection at exit scans them all, which took 2–4 s per worker on a 2-core machine, long enough for
the nanny to give up after 4 s and kill the worker ("Worker process still alive after 4.0 seconds,
killing"). At teardown the plugin moves every live object out of the collector's reach (``gc.freeze``): the
process exits without scanning them (measured: 1.2–1.4 s for two workers to close, none killed).
"""

from __future__ import annotations

import gc

from distributed.diagnostics.plugin import WorkerPlugin

#: The name the plugin is registered under (registering it again replaces it).
NAME = "napari-gradcamo-prompt-exit"


class PromptExit(WorkerPlugin):
    """At the worker's teardown, freeze the garbage collector's heap so the process exits promptly."""

    name = NAME

    def teardown(self, worker) -> None:
        gc.freeze()
