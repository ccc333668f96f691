"""Segmentation settings and model names, with whichever cellpose is installed (3 or 4).

Runs in the main test environment (cellpose 3) and in ``.venv-cp4`` (cellpose 4, ``make test-cellpose4``).
Nothing here runs a network.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import pytest

from napari_gradcamo.io.images import make_image
from napari_gradcamo.segment.cellpose import (
    GENERALIST_MODEL,
    SegmentationError,
    SegmentationSettings,
    available_models,
    cellpose_major,
    resolve_model,
    segment,
)


@pytest.fixture
def small_image():
    rng = np.random.default_rng(1)
    return make_image(rng.random((2, 3, 32, 32)).astype(np.float32), "CZYX", ["dna", "actin"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(nucleus_channel=2), r"nucleus_channel 2 is out of range.*2 channel\(s\) \(0=dna, 1=actin\)"),
        (dict(cyto_channel=-1), r"cyto_channel -1 is out of range"),
        (dict(nucleus_channel=1.0), r"must be a channel index"),
        (dict(), r"has 2 channels .*set cyto_channel and/or nucleus_channel"),
        (dict(nucleus_channel=0, cyto_channel=0), r"same channel"),
        (dict(nucleus_channel=0, diameter=0), r"diameter must be a positive number"),
        (dict(nucleus_channel=0, diameter=-3.0), r"diameter must be a positive number"),
        (dict(nucleus_channel=0, stitch_threshold=0.0), r"stitch_threshold must be in \(0, 1\]"),
        (dict(nucleus_channel=0, stitch_threshold=1.5), r"stitch_threshold must be in \(0, 1\]"),
        (dict(nucleus_channel=0, mode="2.5d"), r"Unknown mode '2.5d'.*'stitch2d'.*'3d'"),
        (dict(nucleus_channel=0, anisotropy=0.0), r"anisotropy must be a positive number"),
        (dict(nucleus_channel=0, min_size=-5), r"min_size must be an integer"),
    ],
)
def test_bad_parameters_are_refused_clearly(small_image, kwargs, message):
    with pytest.raises(SegmentationError, match=message):
        segment(small_image, SegmentationSettings(**kwargs))
    assert issubclass(SegmentationError, ValueError)


def test_unknown_model_or_missing_file(small_image, tmp_path):
    major = cellpose_major()
    with pytest.raises(SegmentationError, match=f"neither a model name of the installed cellpose {major}"):
        segment(small_image, SegmentationSettings(model="not-a-model", nucleus_channel=0))
    with pytest.raises(SegmentationError, match="does not exist.*model file"):
        segment(small_image, SegmentationSettings(model=str(tmp_path / "missing.pth"), nucleus_channel=0))


def test_models_offered_are_those_of_the_installed_cellpose():
    major = cellpose_major()
    assert major == int(version("cellpose").split(".")[0])
    names = available_models()
    default = SegmentationSettings().model
    assert names[0 if major == 4 else 1] == default
    if major == 3:
        assert default == "cyto3" and names[0] == GENERALIST_MODEL and "nuclei" in names
        assert not any(n.startswith("cpsam") for n in names)
    else:
        assert default == "cpsam" and GENERALIST_MODEL not in names and "cyto3" not in names
    for name in names:
        if name != GENERALIST_MODEL:
            assert resolve_model(name) == ("name", name)
