"""Compile napari's label colouring in a background thread before the audit dock first recolours the cells.

The dock colours cells with a ``DirectLabelColormap``. For (u)int32/64 label images napari maps the label
values through a numba typed dict, whose functions numba compiles (not cached on disk) the first time per
label dtype and per texture dtype (uint8 for up to 254 colours, uint16 beyond): measured 2.6 s and 3.4 s on
this 2-core machine (loaded), on napari's main thread when the dock opened. :func:`warm_label_colours`
starts that compilation in a thread of its own (by mapping a few values through the public
``DirectLabelColormap.map``); the dock waits for it before its first recolouring, and meanwhile napari
shows the layer's own colours and stays responsive (a compiling thread takes the GIL in stretches, so the
viewer may hitch, but it is not frozen).
"""

from __future__ import annotations

import threading

import numpy as np

#: label dtype -> set when napari's colouring for it is compiled (or the warm-up failed: nothing to wait for)
_WARM: dict[np.dtype, threading.Event] = {}
#: label dtype -> the name of the thread that compiled it (for tests and benchmarks)
WARMED_BY: dict[np.dtype, str] = {}
_LOCK = threading.Lock()
#: colour counts whose texture needs uint8 and uint16 values (napari: ``minimum_dtype_for_labels(n + 2)``)
_COLOUR_COUNTS = (3, 300)


def warm_label_colours(dtype) -> threading.Event:
    """Start compiling napari's colouring of ``dtype`` labels in a background thread (once per dtype);
    returns an event set when it is done."""
    dtype = np.dtype(dtype)
    with _LOCK:
        event = _WARM.get(dtype)
        if event is None:
            event = _WARM[dtype] = threading.Event()
            if dtype.kind not in "iu" or dtype.itemsize <= 2:  # small ints are used as they are: nothing to compile
                event.set()
            else:
                threading.Thread(target=_warm, args=(dtype, event), name="gradcamo-label-colours",
                                 daemon=True).start()
    return event


def _warm(dtype: np.dtype, event: threading.Event) -> None:
    try:
        from napari.utils.colormaps import DirectLabelColormap

        # numba compiles per array dimension and layout too: a 2D slice (2D view), a 3D volume (3D view), and
        # strided blocks of both (napari's partial texture updates after a paint)
        block = np.arange(16, dtype=dtype).reshape(1, 4, 4)
        arrays = (block[0, :2, :2].copy(), block[:, :2, :2].copy(), block[0, ::2, ::2], block[:, ::2, ::2])
        for count in _COLOUR_COUNTS:
            rgba = np.linspace(0.1, 0.9, count)
            colours = {None: (0.0, 0.0, 0.0, 0.0)}
            colours.update({i + 1: (float(v), 0.5, 1.0 - float(v), 1.0) for i, v in enumerate(rgba)})
            colormap = DirectLabelColormap(color_dict=colours)
            for values in arrays:
                colormap.map(values)
        WARMED_BY[dtype] = threading.current_thread().name
    except Exception:  # napari without numba, or a changed API: the dock then colours as before
        pass
    finally:
        event.set()
