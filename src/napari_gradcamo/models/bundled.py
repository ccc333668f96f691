"""The demo checkpoints shipped inside the package: the one registry of their names and files."""

from __future__ import annotations

from pathlib import Path

from napari_gradcamo.models.metadata import ModelBundle

MODELS_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
#: honest / shortcut: 5 stains (the synthetic Cell Painting demo); nucleus: 1 channel (DNA), for nucleus
#: images such as the cells3d sample. All three: scripts/train_demo_models.py.
DEMO_MODELS = ("honest", "shortcut", "nucleus")
#: The two models of the honest/shortcut demo (the synthetic field's 5 stains).
FIELD_MODELS = ("honest", "shortcut")


def bundled_model_path(name: str) -> Path:
    """Path of a bundled demo checkpoint (one of :data:`DEMO_MODELS`)."""
    if name not in DEMO_MODELS:
        raise ValueError(f"No bundled model '{name}'; the bundled models are {', '.join(DEMO_MODELS)}.")
    path = MODELS_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"Bundled demo model {path.name} is missing; reinstall napari-gradcamo or run "
            "'python scripts/train_demo_models.py'."
        )
    return path


def bundled_models() -> dict[str, Path]:
    """The bundled checkpoints that exist, by name."""
    return {name: MODELS_DIR / f"{name}.safetensors" for name in DEMO_MODELS
            if (MODELS_DIR / f"{name}.safetensors").is_file()}


def load_demo_model(name: str) -> ModelBundle:
    from napari_gradcamo.models.checkpoint import load_checkpoint

    return load_checkpoint(bundled_model_path(name))
