

# --------------------------------------------------------------------------- napari plugin / export fixtures
import pytest as _pytest_plugin


@_pytest_plugin.fixture(scope="session")
def plugin_field():
    """A small deterministic synthetic field (5 stains, 6 cells, 12×96×96) for plugin and export tests."""
    from napari_gradcamo.synthetic import generate_field

    return generate_field(3, shape=(12, 96, 96), n_cells=6, treatment=1, n_classes=2, confound="background")


@_pytest_plugin.fixture(scope="session")
def plugin_checkpoint(tmp_path_factory):
    """An untrained, seeded small 3D CNN checkpoint (5 stains, 2 classes, 8×32×32 crops)."""
    import torch

    from napari_gradcamo.models import ModelMetadata, build_model, save_checkpoint
    from napari_gradcamo.synthetic import STAINS

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
