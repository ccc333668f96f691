"""The command line, run in-process on files, as a user would call it."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from napari_gradcamo.cli import main
from napari_gradcamo.models.bundled import bundled_model_path


@pytest.fixture(scope="module")
def field_files(tmp_path_factory):
    from napari_gradcamo.synthetic.experiment import scenario_fields

    field = scenario_fields("honest", seed=5, n_fields=1)[0]
    folder = tmp_path_factory.mktemp("field")
    image = folder / "field.ome.tif"
    tifffile.imwrite(image, field.image.data.transpose(1, 0, 2, 3), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": field.image.channel_names},
                               "PhysicalSizeZ": 2.0, "PhysicalSizeY": 1.5, "PhysicalSizeX": 1.5})
    tifffile.imwrite(folder / "masks.tif", field.labels)
    return image, folder / "masks.tif", field


def test_audit_writes_table_with_a_row_per_cell(field_files, tmp_path, capsys):
    image, masks, field = field_files
    code = main(["audit", str(image), "--model", str(bundled_model_path("honest")), "--masks", str(masks),
                 "--out", str(tmp_path), "--batch-size", "4", "--threshold", "0.3", "--flag-on", "gradcamo"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    table = pd.read_csv(summary["table"])
    assert summary["cells"] == field.n_cells == len(table)
    assert pd.read_parquet(summary["parquet"]).shape == table.shape
    assert table["flagged"].sum() == summary["flagged"] == (table["gradcamo"] < 0.3).sum()
    assert (table["image"] == "field.ome.tif").all()


def test_layers_lists_shapes_and_marks_the_default(capsys):
    assert main(["layers", str(bundled_model_path("shortcut"))]) == 0
    out = capsys.readouterr().out
    assert "* stage1  (8 ch, 8×16×16)" in out and "stage2" in out and "treated" in out


def test_headless_demo_writes_tables_for_both_models(tmp_path, capsys):
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert set(summary["models"]) == {"honest", "shortcut"}
    for info in summary["models"].values():
        assert len(pd.read_csv(info["table"])) == summary["cells"] == 40
    assert tifffile.imread(tmp_path / "demo_masks.tif").max() == 40


def test_bad_inputs_exit_2_with_a_message(field_files, tmp_path, capsys):
    image, masks, _ = field_files
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    assert main(["audit", str(image), "--model", str(tmp_path / "pickled.pt"), "--masks", str(masks), "--out", str(tmp_path)]) == 2
    assert "pickled" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((4, 4), np.uint16))
    assert main(["audit", str(image), "--model", str(bundled_model_path("honest")), "--masks", str(tmp_path / "wrong.npy"),
                 "--out", str(tmp_path)]) == 2
    assert "differs from the image's ZYX shape" in capsys.readouterr().err
    assert main(["audit", str(image), "--axes", "TCYX", "--model", str(bundled_model_path("honest")), "--masks", str(masks),
                 "--out", str(tmp_path)]) == 2
    assert "only C, Z, Y and X" in capsys.readouterr().err
