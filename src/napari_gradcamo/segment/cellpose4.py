"""The cellpose 4 backend: Cellpose-SAM (``cpsam``) and fine-tuned cpsam files.

Used by :mod:`napari_gradcamo.segment.cellpose` when the installed cellpose is 4.x. Named models
(``cpsam``; ``cpsam_v2`` on cellpose ≥ 4.2) are files in cellpose's model folder, downloaded once from
cellpose's hub address with TLS verification (cellpose's own downloader switches it off). Weights are
float32 on CPU (cellpose's bfloat16 default is slow on CPUs without bfloat16 units), bfloat16 on GPU.
Model files are checked before use: cellpose 4 loads weights with ``strict=False``, so a file lacking
parameters would otherwise run with random ones.
"""

from __future__ import annotations

import os
from pathlib import Path

MAJOR = 4
DEFAULT_MODEL = "cpsam"
_CPSAM_ADDRESS_4_0 = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"


def _dino_available() -> bool:
    """Cellpose-DINO models (cpdino*) need facebookresearch/dinov3, which is not on the package index."""
    import importlib.util

    return importlib.util.find_spec("dinov3") is not None


def model_names() -> list[str]:
    """cpsam first, then the other named models this cellpose can run, then the user's own."""
    from cellpose import models as cp_models

    names = [n for n in cp_models.MODEL_NAMES if n.startswith("cpsam") or _dino_available()]
    ordered = [DEFAULT_MODEL] + [n for n in names if n != DEFAULT_MODEL]
    return ordered + [n for n in cp_models.get_user_models() if n not in ordered]


def named_model_source(name: str) -> tuple[Path, str]:
    """``(file in cellpose's model folder, download address)`` of a named model."""
    from cellpose import models as cp_models

    address = getattr(cp_models, "_MODEL_URL", _CPSAM_ADDRESS_4_0)  # cellpose 4.0/4.1 name the file in the URL
    return Path(cp_models.MODEL_DIR) / name, address.rstrip("/") + "/" + name


def offline_hint(name: str | None = None) -> str:
    from cellpose import models as cp_models

    folder = Path(cp_models.MODEL_DIR)
    where = f"Copy the model file to {folder / name}" if name else f"Copy the model file into {folder}"
    return (
        f"{where} (cellpose's model folder; set CELLPOSE_LOCAL_MODELS_PATH before starting to use another "
        "folder), e.g. downloaded on a machine with internet access, or give the path of a cellpose-4 model "
        "file (such as your fine-tuned cpsam) as the model (CLI: --cellpose-model PATH)."
    )


def _load_state(path: Path) -> dict:
    from napari_gradcamo.segment.model_file import load_state_dict

    state = load_state_dict(path, 4, offline_hint(), mmap=True)
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_model_file(path: Path) -> dict:
    """The file's state dict, if it is a cellpose 4 network this cellpose can build."""
    from napari_gradcamo.segment.model_file import SegmentationError

    state = _load_state(path)
    if "W2" not in state:
        cp3 = any(k.startswith("downsample.") for k in state)
        raise SegmentationError(
            f"{path} is not a cellpose 4 model"
            + (" (it is a cellpose 3 network)" if cp3 else "")
            + ". cellpose 4 is installed and runs cpsam models only; to run cellpose 3 models install "
            "cellpose 3 (pip install 'napari-gradcamo[cellpose3]')."
        )
    if "encoder.cls_token" in state and not _dino_available():
        raise SegmentationError(
            f"{path} is a Cellpose-DINO model, which needs the dinov3 package "
            "(pip install git+https://github.com/facebookresearch/dinov3)."
        )
    return state


def build_model(kind: str, value: str, path: Path, gpu: bool):
    """A ``CellposeModel`` loaded from the checked file at ``path`` (no download)."""
    from cellpose import models as cp_models

    from napari_gradcamo.segment.model_file import SegmentationError

    state = check_model_file(path)
    try:
        model = cp_models.CellposeModel(gpu=gpu, pretrained_model=os.fspath(path), use_bfloat16=gpu)
    except (RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())  # torch lists the mismatches on several lines
        raise SegmentationError(f"cellpose 4 could not load {path}: {detail}") from exc
    expected = model.net.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise SegmentationError(
            f"{path} does not fit cellpose 4's {getattr(model, 'backbone', 'cpsam')} network "
            f"(missing {missing[:3]}, wrong shapes {wrong[:3]}); give a cpsam model file saved by cellpose 4."
        )
    return model
