"""rdf.yaml is read with bounds: a 'billion laughs' alias bomb is refused at once, not expanded."""

from __future__ import annotations

import time
import zipfile

import pytest

from napari_gradcamo.cli import main
from napari_gradcamo.models.bioimageio import MAX_RDF_BYTES, check_yaml, package_metadata
from napari_gradcamo.models.metadata import CheckpointError


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: ``width ** levels`` strings from a few hundred bytes."""
    lines = [f'l0: &l0 [{", ".join(["lol"] * width)}]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "format_version: 0.5.4\ntype: model\n" + "\n".join(lines) + "\n"


def test_billion_laughs_hangs_no_more_gradcamo_layers(tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "rdf.yaml").write_text(laughs())
    start = time.perf_counter()
    code = main(["layers", str(tmp_path / "pkg")])  # was > 150 s, also under a 6 GB memory limit
    assert time.perf_counter() - start < 20
    assert code == 2
    assert "YAML aliases" in capsys.readouterr().err


def test_few_aliases_that_expand_hugely_are_refused_too(tmp_path):
    bomb = laughs(levels=9, width=7)  # 56 aliases, 7**8 = 5.8 million nodes
    with pytest.raises(CheckpointError, match="expands to more than"):
        check_yaml(bomb, "rdf.yaml")


def test_a_bomb_inside_a_zip_package_and_an_oversized_rdf_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as archive:
        archive.writestr("rdf.yaml", laughs())
    with pytest.raises(CheckpointError, match="m.zip: rdf.yaml uses more than"):
        package_metadata(tmp_path / "m.zip")
    (tmp_path / "rdf.yaml").write_text("a: " + "x" * (MAX_RDF_BYTES + 1))
    with pytest.raises(CheckpointError, match="it is not a model description"):
        package_metadata(tmp_path / "rdf.yaml")
    (tmp_path / "rdf.yaml").write_text("a: [1, 2\nb: {")
    with pytest.raises(CheckpointError, match="is not valid YAML"):
        package_metadata(tmp_path / "rdf.yaml")


def test_ordinary_yaml_with_a_few_anchors_passes():
    check_yaml("defaults: &d {mean: 0, std: 1}\nred: *d\ngreen: *d\n", "rdf.yaml")
