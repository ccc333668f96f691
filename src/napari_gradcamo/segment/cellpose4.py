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
import re
from pathlib import Path
from typing import Mapping, Sequence

MAJOR = 4
DEFAULT_MODEL = "cpsam"
_CPSAM_ADDRESS_4_0 = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"
#: Parameters only a cellpose 4 (Cellpose-SAM) network has: its SAM ViT encoder, its output layer, W2.
CP4_KEYS, CP4_PREFIXES = ("W2",), ("encoder.", "out.")
#: How many names a message lists before "and N more".
LISTED = 8
_TORCH_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<name>[\w.]+): copying a param with shape torch\.Size\(\[(?P<found>[\d, ]*)\]\) "
    r"from checkpoint, the shape in current model is torch\.Size\(\[(?P<expected>[\d, ]*)\]\)")


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


def model_family(keys: Sequence[str]) -> str | None:
    """``"cellpose4"`` if any parameter is one only cpsam networks have, ``"cellpose3"`` for a CPnet, else None."""
    if any(k in CP4_KEYS or k.startswith(CP4_PREFIXES) for k in keys):
        return "cellpose4"
    if any(k.startswith(("downsample.", "upsample.")) for k in keys):
        return "cellpose3"
    return None


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def mismatch_message(path, found: Mapping[str, tuple], expected: Mapping[str, tuple], network: str = "cpsam"
                     ) -> str | None:
    """What is wrong with a model file, by parameter: missing ones, misshapen ones (file vs network shape) and
    how many unexpected ones; None when the file's parameters fit the network.

    Parameters
    ----------
    path : the model file (for the message).
    found, expected : parameter name → shape, of the file and of the network it must fit.
    network : the network's name in the message.

    Examples
    --------
    >>> mismatch_message("m.pt", {"a": (2,)}, {"a": (3,), "W2": (4, 4)})
    "m.pt does not fit cellpose 4's cpsam network: 1 missing parameter (W2 (4, 4)); 1 misshapen parameter (a: (2,) in the file, (3,) expected). It is damaged or incomplete, or saved from another network; give a cpsam model file saved by cellpose 4 (e.g. the original cpsam, or your fine-tuned model saved by cellpose's training)."
    """
    missing = [k for k in expected if k not in found]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    extra = [k for k in found if k not in expected]
    if not (missing or wrong):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing parameter{'s' * (len(missing) > 1)} "
                     f"({_names([f'{k} {tuple(expected[k])}' for k in missing])})")
    if wrong:
        parts.append(f"{len(wrong)} misshapen parameter{'s' * (len(wrong) > 1)} "
                     f"({_names([f'{k}: {tuple(found[k])} in the file, {tuple(expected[k])} expected' for k in wrong])})")
    if extra:
        parts.append(f"{len(extra)} parameter{'s' * (len(extra) > 1)} the network does not have "
                     f"({_names(extra)})")
    return (f"{path} does not fit cellpose 4's {network} network: " + "; ".join(parts) + ". It is damaged or "
            "incomplete, or saved from another network; give a cpsam model file saved by cellpose 4 (e.g. the "
            "original cpsam, or your fine-tuned model saved by cellpose's training).")


def shapes_from_load_error(detail: str) -> tuple[dict, dict]:
    """(file shapes, network shapes) of the parameters torch's ``load_state_dict`` reported as size mismatches."""
    found, expected = {}, {}
    for match in _TORCH_SIZE_MISMATCH.finditer(detail):
        as_shape = lambda text: tuple(int(v) for v in text.replace(" ", "").split(",") if v)  # noqa: E731
        found[match["name"]], expected[match["name"]] = as_shape(match["found"]), as_shape(match["expected"])
    return found, expected


def check_model_file(path: Path) -> dict:
    """The file's state dict, if it holds a cellpose 4 network (parameters missing or misshapen are named later,
    by :func:`build_model`, against the network cellpose builds)."""
    from napari_gradcamo.segment.model_file import SegmentationError

    state = _load_state(path)
    family = model_family(list(state))
    if family != "cellpose4":
        raise SegmentationError(
            f"{path} is not a cellpose 4 model"
            + (" (it is a cellpose 3 network)" if family == "cellpose3" else
               f" (it has none of cpsam's parameters {', '.join(CP4_KEYS)} or {'*, '.join(CP4_PREFIXES)}*; "
               f"it holds {_names(list(state)) or 'no parameters'})")
            + ". cellpose 4 is installed and runs cpsam models only; to run cellpose 3 models install "
            "cellpose 3 (pip install 'napari-gradcamo[cellpose3]')."
        )
    if "encoder.cls_token" in state and not _dino_available():
        raise SegmentationError(
            f"{path} is a Cellpose-DINO model, which needs the dinov3 package "
            "(pip install git+https://github.com/facebookresearch/dinov3)."
        )
    return state


def _cpsam_shapes() -> dict:
    """Parameter name → shape of cellpose 4's cpsam network, built on torch's meta device (nothing allocated,
    no weights read); empty if this cellpose cannot build it."""
    import torch

    try:
        from cellpose import vit

        with torch.device("meta"):
            net = vit.CPSAM()
    except Exception:  # noqa: BLE001 - only the message's detail depends on it
        return {}
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def build_model(kind: str, value: str, path: Path, gpu: bool):
    """A ``CellposeModel`` loaded from the checked file at ``path`` (no download)."""
    from cellpose import models as cp_models

    from napari_gradcamo.segment.model_file import SegmentationError

    state = check_model_file(path)
    try:
        model = cp_models.CellposeModel(gpu=gpu, pretrained_model=os.fspath(path), use_bfloat16=gpu)
    except (RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())  # torch lists the mismatches on several lines
        found, expected = shapes_from_load_error(detail)
        message = mismatch_message(path, found, expected) if found else None
        if message is None:  # cellpose refused the file before loading it (e.g. "not a CP4 model" without W2)
            message = mismatch_message(path, {k: tuple(v.shape) for k, v in state.items()}, _cpsam_shapes())
        raise SegmentationError(message or f"cellpose 4 could not load {path}: {detail}") from exc
    found = {k: tuple(v.shape) for k, v in state.items()}
    expected = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    message = mismatch_message(path, found, expected, getattr(model, "backbone", "cpsam"))
    if message:
        raise SegmentationError(message)
    return model
