"""One run per output folder: a lock file that names the run holding the folder.

Two runs writing into one ``--out`` would each exit 0 while one silently replaced the other's results.
:func:`folder_lock` creates ``LOCK_NAME`` in the folder atomically (written beside it, then hard-linked into
place, which fails when the name exists) holding the process id, the host and the process's start time.
A second run finds it and raises :class:`FolderInUseError` (exit code 2) naming the folder and the run.
A lock left by a run that died (its process is gone, or the id now belongs to a different process) is
taken over; a lock from another host cannot be checked and is refused with the way to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

from napari_gradcamo.io.atomic import OutputError

LOCK_NAME = ".gradcamo.lock"

_held: dict[Path, int] = {}  # folders locked by this process -> nesting count
_held_guard = threading.Lock()


class FolderInUseError(OutputError):
    """The output folder is being written by another live run."""


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return -1.0  # exists but cannot be inspected (another user's process): treat as alive


def _this_run() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "locked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _holder(lock: Path) -> dict | None:
    """The run recorded in ``lock``, or None when it is unreadable (being written, or damaged)."""
    try:
        holder = json.loads(lock.read_text()[:4096])
    except (OSError, ValueError):
        return None
    if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str):
        return holder
    return None


def _alive(holder: dict) -> bool:
    """Whether the run in ``holder`` (same host) still runs: its pid exists and was started when it locked."""
    started = _start_time(holder["pid"])
    if started is None:
        return False
    recorded = holder.get("started")
    if started < 0 or not isinstance(recorded, (int, float)):
        return True
    return abs(started - recorded) < 1.0  # a different start time: the pid was reused by another process


def _describe(holder: dict) -> str:
    return f"process {holder['pid']} on {holder['host']}, locked {holder.get('locked_at', 'at an unknown time')}"


def _acquire(folder: Path, what: str) -> None:
    lock = folder / LOCK_NAME
    me = _this_run()
    temp = folder / f"{LOCK_NAME}.{me['pid']}.{threading.get_ident()}"
    temp.write_text(json.dumps(me))
    try:
        for _ in range(20):
            try:
                os.link(temp, lock)  # atomic: fails when a lock exists, and the lock is complete when seen
                return
            except FileExistsError:
                pass
            holder = _holder(lock)
            if holder is None:
                # being written by a run that just started, or damaged: give it a moment, then take it over
                time.sleep(0.05)
                holder = _holder(lock)
                if holder is None and lock.exists() and time.time() - lock.stat().st_mtime > 2.0:
                    lock.unlink(missing_ok=True)
                continue
            if holder["host"] != me["host"]:
                raise FolderInUseError(
                    f"{what} {folder} is in use by another run ({_describe(holder)}); wait for it to finish or "
                    f"choose another folder. If that run has ended, delete {lock}.")
            if holder["pid"] == me["pid"] and holder.get("started") == me["started"]:
                return  # this process (another thread's lock that was released between the checks)
            if _alive(holder):
                raise FolderInUseError(
                    f"{what} {folder} is in use by another run ({_describe(holder)}); wait for it to finish or "
                    "choose another folder.")
            # a stale lock left by a run that died: take it over (rename first so only one taker wins)
            stale = folder / f"{LOCK_NAME}.stale.{me['pid']}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(lock, stale)
                if _holder(stale) == holder:
                    stale.unlink(missing_ok=True)
                else:  # someone else's fresh lock moved by mistake: put it back
                    with contextlib.suppress(FileExistsError, FileNotFoundError):
                        os.link(stale, lock)
                    stale.unlink(missing_ok=True)
        raise FolderInUseError(f"{what} {folder} is in use by another run (its lock {lock} keeps changing); "
                               "choose another folder.")
    finally:
        temp.unlink(missing_ok=True)


def _release(folder: Path) -> None:
    lock = folder / LOCK_NAME
    holder = _holder(lock)
    if holder is not None and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname():
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for this run; :class:`FolderInUseError` when another run holds it.

    Re-entrant within one process, so a command may call functions that lock the same folder.

    Parameters
    ----------
    folder : str or Path
        The output folder.
    what : str
        How the user named it (``"--out"``), used in messages.

    Examples
    --------
    >>> import tempfile
    >>> with folder_lock(tempfile.mkdtemp()) as out:
    ...     (out / "table.csv").write_text("label\\n1\\n")
    10
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder; give a folder path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{what} {folder} is not writable: it cannot be created ({error.strerror or error}); "
                          "choose a folder you can write to.") from None
    key = folder.resolve()
    with _held_guard:
        nested = _held.get(key, 0)
        if nested:
            _held[key] = nested + 1
    if not nested:
        try:
            _acquire(folder, what)
        except FolderInUseError:
            raise
        except OSError as error:  # read-only, no space, permissions
            raise OutputError(f"{what} {folder} is not writable ({error.strerror or error}); "
                              "choose a folder you can write to.") from None
        with _held_guard:
            _held[key] = 1
    try:
        yield folder
    finally:
        with _held_guard:
            _held[key] -= 1
            last = _held[key] == 0
            if last:
                del _held[key]
        if last:
            _release(folder)
