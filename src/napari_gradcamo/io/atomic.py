"""Atomic writes: a file is either its old content or its complete new content, never half of each.

Every writer here writes to a temporary file in the target's own folder (same file system), flushes and
fsyncs it, then renames it over the target with :func:`os.replace`. A failure (disk full, Ctrl-C, an
exception in the writer) removes the temporary file and leaves the target as it was.

Permissions: :func:`tempfile.mkstemp` creates files with mode 0600 (and :func:`tempfile.mkdtemp` folders with
0700) whatever the umask, which would leave results unreadable to colleagues on a shared file system. Every
temporary here is made with :func:`temp_file` / :func:`temp_folder`, which give it the mode an ordinary
``open()`` / ``mkdir`` would (0666 / 0777 minus the user's umask) before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

TEMP_PREFIX = ".gradcamo-tmp-"
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: ``/proc/self/status``);
    elsewhere set and restored at once under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # the most restrictive value while it is briefly set
        os.umask(mask)
    return mask


def temp_file(folder: str | Path, prefix: str = TEMP_PREFIX, suffix: str = "") -> Path:
    """A new empty file in ``folder`` (as :func:`tempfile.mkstemp`), with the mode 0666 & ~umask that an ordinary
    new file gets (mkstemp's own 0600 would survive the rename onto the target)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(name)


def temp_folder(folder: str | Path, prefix: str = TEMP_PREFIX) -> Path:
    """A new empty folder in ``folder`` (as :func:`tempfile.mkdtemp`) with the mode 0777 & ~umask."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    os.chmod(path, 0o777 & ~current_umask())
    return path


class OutputError(ValueError):
    """An output cannot be written (folder missing, read-only, a file in the way, results already there)."""


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed onto ``target``."""
    target = Path(target)
    temp = temp_file(target.parent, suffix=target.suffix)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as temp:
        temp.write_bytes(data)
    return Path(target)


def write_text(target: str | Path, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_with(target: str | Path, writer: Callable[[Path], object]) -> Path:
    """Atomically write ``target`` by calling ``writer(temp_path)`` (e.g. ``lambda p: df.to_csv(p)``)."""
    with atomic_path(target) as temp:
        writer(temp)
    return Path(target)


def write_group(writers: Sequence[tuple[str | Path, Callable[[Path], object]]]) -> list[Path]:
    """Write several files that belong together (a CSV and its Parquet): every file is written to a temporary
    first; only when all succeeded are they renamed into place, so a failure leaves all old files as they were."""
    temps: list[tuple[Path, Path]] = []
    try:
        for target, writer in writers:
            target = Path(target)
            temp = temp_file(target.parent, suffix=target.suffix)
            temps.append((temp, target))
            writer(temp)
            _fsync(temp)
        for temp, target in temps:
            os.replace(temp, target)
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise
    if temps:
        _fsync_folder(temps[0][1].parent)
    return [target for _, target in temps]


def check_writable_folder(folder: str | Path, what: str = "--out") -> Path:
    """Create ``folder`` if needed and prove a file can be written there; :class:`OutputError` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder; give a folder path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise OutputError(f"{what} {folder} is not writable ({error.strerror or error}); "
                          "choose a folder you can write to.") from None
    return folder


def refuse_existing(paths: Sequence[str | Path], overwrite: bool, option: str = "--overwrite") -> None:
    """Refuse to replace existing results unless the user asked for it (``overwrite``)."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing[:5]) + (" …" if len(existing) > 5 else "")
        raise OutputError(f"Results already exist: {names}. Choose another output folder or pass {option} "
                          "to replace them.")
