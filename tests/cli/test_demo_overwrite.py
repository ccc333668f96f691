"""`gradcamo demo --headless` follows the no-silent-overwrite rule of the other commands."""

from __future__ import annotations

from napari_gradcamo.cli import main
from napari_gradcamo.cli.demo import demo_outputs


def test_demo_refuses_to_rewrite_an_earlier_demo_before_computing(tmp_path, capsys):
    earlier = demo_outputs(tmp_path)[2]  # one table of an earlier demo
    earlier.write_text("label\n1\n")
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"Results already exist: {earlier}" in err and "--overwrite" in err
    assert earlier.read_text() == "label\n1\n"  # before the fix every file was rewritten
    assert not (tmp_path / "demo_field.ome.tif").exists()  # refused before anything was computed or written


def test_demo_outputs_names_every_file_the_demo_writes(tmp_path):
    names = {p.name for p in demo_outputs(tmp_path)}
    assert {"demo_field.ome.tif", "demo_masks.tif", "demo_summary.json"} <= names
    assert any(n.endswith("_gradcamo.parquet") for n in names) and any(n.endswith("_gradcamo.csv") for n in names)
