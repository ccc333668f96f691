"""cellpose 4 (Cellpose-SAM) through the adapter, with a cpsam network of RANDOM weights.

cpsam's trained weights come from cellpose's hub, which is not reachable here, so these tests build
the network offline with cellpose's own ``cellpose.vit.CPSAM()`` (ViT-L, ~305 M parameters; random
initialisation), save it with its ``save_model`` and load the file the way a user's fine-tuned cpsam
is loaded (``CellposeModel(pretrained_model=PATH)``). They check the calls, shapes, progress, cancel,
2D, stitched 2D, 3D and anisotropy, NOT mask quality. Every plane cellpose sees is one 256×256 ViT-L
tile (~7–20 s on 2 CPU cores), so the images are tiny and the planes few.

Run with cellpose 4 installed: ``make test-cellpose4`` (builds ``.venv-cp4``).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from napari_gradcamo.io.images import make_image
from napari_gradcamo.progress import Cancelled, CancelToken
from napari_gradcamo.segment.cellpose import (
    GENERALIST_MODEL,
    SegmentationError,
    SegmentationSettings,
    cellpose_major,
    load_model,
    segment,
)

pytestmark = pytest.mark.skipif(
    cellpose_major() != 4, reason="cellpose 4 tests; run them with 'make test-cellpose4' (.venv-cp4)"
)


@pytest.fixture(scope="module")
def cpsam_file(tmp_path_factory):
    """A cpsam model file with random weights (seeded), saved by cellpose 4's own network class."""
    import torch
    from cellpose.vit import CPSAM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cpsam") / "cpsam_random.pt"
    CPSAM().save_model(path)
    yield path
    path.unlink(missing_ok=True)  # ~1.2 GB: a CI machine's /tmp must not keep it after the module


def settings_for(path, **kw):
    kw.setdefault("diameter", 30.0)
    return SegmentationSettings(model=str(path), **kw)


def two_stain_image(shape, voxel=(1.0, 1.0, 1.0)):
    rng = np.random.default_rng(len(shape) + sum(shape))
    data = rng.random((2, *shape)).astype(np.float32)
    axes = "CZYX" if len(shape) == 3 else "CYX"
    return make_image(data, axes, ["dna", "actin"], voxel if len(shape) == 3 else voxel[1:])


def assert_labels(result, shape):
    assert result.shape == shape and result.dtype == np.uint32
    assert set(np.unique(result)) == set(range(int(result.max()) + 1))  # relabelled 1..N


def test_cpsam_file_loads_and_stitched_2d_reports_every_plane(cpsam_file):
    import torch

    settings = settings_for(cpsam_file, nucleus_channel=0, cyto_channel=1, gpu=False)
    model = load_model(settings)
    assert model.backbone == "sam_vitl" and model.net.dtype == torch.float32
    assert model.device.type == "cpu"
    saved = torch.load(cpsam_file, map_location="cpu", weights_only=True)
    for key in ("W2", "out.weight", "encoder.blocks.23.mlp.lin2.weight"):  # the file's weights, not a fresh init
        assert torch.equal(model.net.state_dict()[key], saved[key])
    assert load_model(settings) is model  # kept for the next call

    calls = []
    result = segment(two_stain_image((2, 24, 32)), settings, progress=lambda *a: calls.append(a))
    assert_labels(result, (2, 24, 32))
    assert [c[0] for c in calls] == [0, 1, 2, 3] and all(c[1] == 3 for c in calls)
    assert "slice 2 of 2" in calls[2][2] and "stitched 2 slice(s)" in calls[3][2]


def test_stitched_2d_cancel_after_the_first_plane(cpsam_file):
    token = CancelToken()
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        segment(two_stain_image((3, 24, 24)), settings_for(cpsam_file, nucleus_channel=0), progress, token)
    assert seen == [0, 1]


def _planes_run(caplog) -> dict[str, tuple[int, int, int]]:
    """cellpose's own log of its 3D run: ``{"YX": (planes, height, width), "ZY": …, "ZX": …}``."""
    runs = {}
    for record in caplog.records:
        words = record.getMessage().split()
        if record.name == "cellpose.core" and words[:1] == ["running"]:
            numbers = [int(w) for w in record.getMessage().replace("(", " ").replace(",", " ").replace(")", " ").split()
                       if w.isdigit()]
            runs[words[1].rstrip(":")] = tuple(numbers)
    return runs


def test_3d_runs_once_and_resamples_z_by_the_anisotropy(cpsam_file, caplog):
    # voxel 1.0 × 0.5 × 0.5 µm gives anisotropy 2; the settings override it with 4
    image = two_stain_image((4, 8, 8), voxel=(1.0, 0.5, 0.5))
    caplog.set_level(logging.INFO, logger="cellpose.core")
    calls = []
    # diameter 240 px → cellpose scales y and x by 30/240: 8 px → 1 px; z by 4 × 30/240: 4 → 2 planes
    # (with the image's anisotropy 2 it would be 1 plane)
    settings = settings_for(cpsam_file, nucleus_channel=0, mode="3d", diameter=240.0, anisotropy=4.0)
    result = segment(image, settings, progress=lambda *a: calls.append(a))
    assert_labels(result, (4, 8, 8))
    assert [(c[0], c[1]) for c in calls] == [(0, 1), (1, 1)] and "anisotropy 4.00" in calls[0][2]
    assert _planes_run(caplog) == {"YX": (2, 1, 1), "ZY": (1, 2, 1), "ZX": (1, 2, 1)}


def test_3d_takes_the_anisotropy_from_the_voxel_size_and_cancels_before_the_network(cpsam_file, caplog):
    image = two_stain_image((4, 8, 8), voxel=(2.0, 0.5, 0.5))
    caplog.set_level(logging.INFO, logger="cellpose.core")
    token = CancelToken()
    calls = []

    def progress(done, total, message):
        calls.append(message)
        token.cancel()

    with pytest.raises(Cancelled):
        segment(image, settings_for(cpsam_file, nucleus_channel=0, mode="3d"), progress, token)
    assert len(calls) == 1 and "anisotropy 4.00" in calls[0]
    assert _planes_run(caplog) == {}, "the network ran although the run was cancelled at its start"


# --------------------------------------------------------------------------- files and names


def test_missing_cpsam_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    """No network: cellpose's model folder is empty and its download address is a closed local port."""
    from cellpose import models as cp_models

    folder = tmp_path / "models"
    monkeypatch.setattr(cp_models, "MODEL_DIR", folder)
    monkeypatch.setattr(cp_models, "_MODEL_URL", "http://127.0.0.1:9/models/")
    image = two_stain_image((1, 16, 16))
    with pytest.raises(SegmentationError) as info:
        segment(image, SegmentationSettings(model="cpsam", nucleus_channel=0))
    message = str(info.value)
    assert "'cpsam'" in message and "could not be downloaded" in message
    assert f"Copy the model file to {folder / 'cpsam'}" in message and "CELLPOSE_LOCAL_MODELS_PATH" in message
    assert "--cellpose-model PATH" in message
    assert not any(folder.glob("*")), "a partial download was left behind"


def test_cellpose3_models_are_refused_with_the_way_out(tmp_path):
    import torch

    image = two_stain_image((1, 16, 16))
    cp3 = tmp_path / "cyto3_like.pth"
    torch.save({"downsample.down.res_down_0.conv.conv_0.0.weight": torch.zeros(2)}, cp3)
    with pytest.raises(SegmentationError, match=r"cellpose 3 network.*napari-gradcamo\[cellpose3\]"):
        segment(image, SegmentationSettings(model=str(cp3), nucleus_channel=0))
    with pytest.raises(SegmentationError, match=r"cellpose 3 network, but cellpose 4 is installed.*cpsam"):
        segment(image, SegmentationSettings(model=GENERALIST_MODEL, nucleus_channel=0))


def test_incomplete_or_misshapen_cpsam_files_are_refused(tmp_path):
    import torch

    image = two_stain_image((1, 16, 16))
    partial = tmp_path / "partial.pt"
    torch.save({"W2": torch.eye(192).reshape(192, 3, 8, 8)}, partial)  # cellpose would run it with random weights
    with pytest.raises(SegmentationError, match=r"does not fit cellpose 4's \w+ network: \d+ missing parameters \("):
        segment(image, SegmentationSettings(model=str(partial), nucleus_channel=0))
    misshapen = tmp_path / "misshapen.pt"
    torch.save({"W2": torch.zeros(3, 3)}, misshapen)
    with pytest.raises(SegmentationError, match=r"1 misshapen parameter \(W2: \(3, 3\) in the file, \(\d"):
        segment(image, SegmentationSettings(model=str(misshapen), nucleus_channel=0))


@pytest.mark.parametrize("removed", ["W2", "encoder.patch_embed.proj.weight"])
def test_a_cpsam_file_with_one_parameter_removed_names_it(cpsam_file, tmp_path, removed):
    """Issue 26: a cpsam file without W2 was called 'not a cellpose 4 model … install cellpose 3'."""
    import torch

    state = torch.load(cpsam_file, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    assert removed in state
    del state[removed]
    damaged = tmp_path / "damaged.pt"
    torch.save(state, damaged)
    del state
    try:
        with pytest.raises(SegmentationError) as caught:
            segment(two_stain_image((1, 16, 16)), settings_for(damaged, nucleus_channel=0))
    finally:
        damaged.unlink(missing_ok=True)  # ~0.9 GB each
    message = str(caught.value)
    assert f"1 missing parameter ({removed} (" in message and "cellpose 3" not in message
