"""Sizes declared by a file, checked against this machine's memory before anything is allocated.

A file the user did not write can declare any shape (an OME-Zarr array of 21.8 TiB, a checkpoint with a
width of 10⁹, a crop of 10000³). Every reader computes the bytes the declared shape needs with
:func:`nbytes` and calls :func:`check_allocation` first, so a hostile or damaged file becomes a typed error
naming what is too large, never a ``MemoryError`` or a swapping machine.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

#: Nesting depth allowed in JSON metadata read from files (checkpoints, results folders); deeper is refused
#: before Python's recursion limit is reached.
MAX_JSON_DEPTH = 64


def available_memory() -> int:
    """Bytes of memory this machine can still hand out (``psutil``'s ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def nbytes(shape: Iterable, dtype=np.float32) -> int:
    """Bytes an array of ``shape`` and ``dtype`` needs; a :class:`ValueError` for a shape that is not sizes.

    Examples
    --------
    >>> nbytes((2, 3), "uint16")
    12
    """
    sizes = []
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 0:
            raise ValueError(f"shape {tuple(shape)} must be whole numbers ≥ 0.")
        sizes.append(int(size))
    return math.prod(sizes) * np.dtype(dtype).itemsize


def check_allocation(n_bytes: int, what: str, error: type[Exception] = ValueError,
                     fix: str = "check the file; it may be damaged or not meant for this machine") -> int:
    """Refuse (raise ``error``) when ``n_bytes`` exceed the memory available now; return ``n_bytes``.

    Parameters
    ----------
    n_bytes : int
        Bytes the allocation needs (see :func:`nbytes`).
    what : str
        What would be allocated, e.g. ``"labels/cells of plate.zarr (shape (…))"``; named in the message.
    error : type
        The caller's typed error (a ``ValueError`` subclass, so the CLI exits with code 2).
    fix : str
        What the user can do about it.
    """
    limit = available_memory()
    if n_bytes > limit:
        raise error(f"{what} needs {format_bytes(n_bytes)} but this machine has {format_bytes(limit)} of "
                    f"memory available; {fix}.")
    return n_bytes


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def json_depth(value, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of decoded JSON, counted without recursion; stops counting past ``limit``."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, level)
            if depth > limit:
                return depth
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return depth


def loads_json(text: str | bytes, what: str, error: type[Exception] = ValueError, limit: int = MAX_JSON_DEPTH):
    """``json.loads`` that refuses nesting deeper than ``limit`` (before the decoder can recurse) with ``error``."""
    import json

    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = level = 0
    in_string = escaped = False
    for char in text:  # a cheap bracket count that skips strings: the decoder itself recurses per level
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            depth = max(depth, level)
            if depth > limit:
                raise error(f"{what} nests its JSON more than {limit} levels deep; it is not metadata this "
                            "program wrote. Use the original file.")
        elif char in "]}":
            level -= 1
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise error(f"{what} is unreadable: not valid JSON ({exc}); use the original file.") from None
