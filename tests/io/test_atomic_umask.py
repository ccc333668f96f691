"""Atomically written files and folders get the user's umask, not mkstemp's 0600 / mkdtemp's 0700 (a colleague on
a shared file system must be able to read the results). Each umask runs in its own process, since the umask is
process-wide."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import napari_gradcamo

SCRIPT = r"""
import json, os, stat, sys
from pathlib import Path
import pandas as pd
os.umask(int(sys.argv[2], 8))
from napari_gradcamo.io import atomic
from napari_gradcamo.plate import store
out = Path(sys.argv[1])
atomic.write_text(out / "a.txt", "x")
atomic.write_group([(out / "b.csv", lambda p: p.write_text("1")), (out / "c.json", lambda p: p.write_text("{}"))])
store.atomic_write(out / "d.json", lambda p: p.write_text("{}"))
table = pd.DataFrame({"plate": ["P"], "well": ["A01"], "gradcamo": [0.5]})
store.write_plate_table(out, table)
reference = out / "plain.txt"
reference.write_text("x")  # what an ordinary open() makes under this umask
modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in sorted(out.rglob("*"))}
print(json.dumps({"umask": atomic.current_umask(), "modes": modes}))
"""


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_and_folders_are_created_with_the_users_umask(tmp_path, umask):
    src = str(Path(napari_gradcamo.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), oct(umask)[2:]], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["umask"] == umask  # read without changing it
    modes = result["modes"]
    assert modes["plain.txt"] == 0o666 & ~umask
    files = [k for k in modes if (tmp_path / k).is_file()]
    folders = [k for k in modes if (tmp_path / k).is_dir()]
    assert {"a.txt", "b.csv", "c.json", "d.json"} <= set(files) and "plate.parquet" in folders
    assert not [k for k in modes if Path(k).name.startswith(".")], "no temporary left behind"
    for name in files:
        assert modes[name] == 0o666 & ~umask, (name, oct(modes[name]))
    for name in folders:
        assert modes[name] == 0o777 & ~umask, (name, oct(modes[name]))
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) & 0o044 == (0o044 & ~umask)
