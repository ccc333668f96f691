"""The README's Python example runs as written, on the demo field and a bundled model."""

import re
import shutil
from pathlib import Path

import pandas as pd
import tifffile

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    from napari_gradcamo.models.bundled import bundled_model_path
    from napari_gradcamo.synthetic.experiment import demo_field

    field = demo_field()
    tifffile.imwrite(tmp_path / "field.ome.tif", field.image.data.transpose(1, 0, 2, 3), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": list(field.image.channel_names)}})
    tifffile.imwrite(tmp_path / "masks.tif", field.labels)
    shutil.copy(bundled_model_path("honest"), tmp_path / "model.safetensors")
    monkeypatch.chdir(tmp_path)

    exec(compile(python_example(), "README.md", "exec"), {})

    tables = list((tmp_path / "results").glob("*.csv"))
    assert len(tables) == 1
    table = pd.read_csv(tables[0])
    assert len(table) == field.n_cells
    assert table["gradcamo"].between(0, 1).all()
    from napari_gradcamo.output.results import read_run_record

    record = read_run_record(tables[0])
    assert record["completed"] and record["checkpoint"]["sha256"] and record["cells_done"] == field.n_cells
    assert "gradcamo" in capsys.readouterr().out


def test_import_is_light():
    """``import napari_gradcamo`` loads neither torch nor Qt (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, napari_gradcamo as ng; ng.__all__; "
            "print(any(m in sys.modules for m in ('torch', 'qtpy', 'PyQt6', 'napari')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
