"""What :mod:`.cellpose` and both backends (:mod:`.cellpose3`, :mod:`.cellpose4`) share: the error type, the
name of the generalist model, and loading a cellpose model file's weights without unpickling code."""

from __future__ import annotations

from pathlib import Path

#: The generalist cellpose-3 model whose weights :mod:`.weights` obtains without a download.
GENERALIST_MODEL = "generalist_cyto"


class SegmentationError(ValueError):
    """Segmentation cannot run with these settings or this model; the message says how to fix it."""


def load_state_dict(path: Path, version: int, hint: str, **load_kwargs) -> dict:
    """A cellpose model file's weights, loaded without unpickling code (``weights_only``); a file that is not
    a state dict raises :class:`SegmentationError` with ``hint`` (how to get a good one)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, **load_kwargs)
    except Exception as exc:
        raise SegmentationError(
            f"{path} is not a loadable cellpose-{version} model file ({type(exc).__name__}: {exc}). {hint}"
        ) from exc
    if not isinstance(state, dict):
        raise SegmentationError(f"{path} does not hold a state dict of network weights.")
    return state
