"""One run per output folder (io/lock.py): real concurrent processes, stale locks, the CLI's exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from napari_gradcamo.cli import main
from napari_gradcamo.io.lock import LOCK_NAME, FolderInUseError, folder_lock

SRC = str(Path(__file__).resolve().parents[2] / "src")

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from napari_gradcamo.io.lock import folder_lock, FolderInUseError
    folder, ready, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    try:
        with folder_lock(folder):
            ready.write_text("locked")
            time.sleep(hold)
    except FolderInUseError as error:
        ready.write_text("refused: " + str(error))
        sys.exit(2)
""")


def _spawn(folder: Path, ready: Path, hold: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready), str(hold)], env=env)


def _wait_for(path: Path, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_a_live_run_holds_its_folder_and_the_cli_refuses_with_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    holder = _spawn(out, tmp_path / "ready", hold=60)
    try:
        assert _wait_for(tmp_path / "ready") == "locked"
        # before the fix both runs exited 0 and the second silently replaced the first's tables
        code = main(["audit", str(tmp_path / "none.tif"), "--model", str(tmp_path / "none.safetensors"),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2
        assert f"--out {out} is in use by another run (process {holder.pid}" in err
        assert main(["demo", "--headless", "--out", str(out)]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        with pytest.raises(FolderInUseError, match="wait for it to finish or choose another folder"):
            with folder_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_two_processes_started_together_one_wins(tmp_path):
    out = tmp_path / "out"
    runs = [_spawn(out, tmp_path / f"ready{i}", hold=3) for i in range(2)]
    codes = sorted(run.wait(timeout=120) for run in runs)
    assert codes == [0, 2]
    texts = sorted(_wait_for(tmp_path / f"ready{i}") for i in range(2))
    assert texts[0] == "locked" and texts[1].startswith("refused: --out")
    assert not (out / LOCK_NAME).exists()  # released by the winner


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = _spawn(out, tmp_path / "ready", hold=60)
    assert _wait_for(tmp_path / "ready") == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead run's lock is still there
    with folder_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_a_reused_pid_does_not_keep_the_lock(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                   "started": 12.0}))  # a live pid, but not the run that locked
    with folder_lock(tmp_path):
        pass


def test_a_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": 1.0}))
    with pytest.raises(FolderInUseError, match=f"If that run has ended, delete {tmp_path / LOCK_NAME}"):
        with folder_lock(tmp_path):
            pass


def test_the_lock_is_reentrant_in_one_process_and_a_file_is_refused(tmp_path):
    with folder_lock(tmp_path):
        with folder_lock(tmp_path):
            assert (tmp_path / LOCK_NAME).exists()
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        with folder_lock(tmp_path / "file"):
            pass
