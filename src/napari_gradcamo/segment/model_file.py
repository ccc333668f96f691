"""What :mod:`.cellpose` and both backends (:mod:`.cellpose3`, :mod:`.cellpose4`) share: the error type, the
name of the generalist model, and loading a cellpose model file's weights without unpickling code."""

from __future__ import annotations

from pathlib import Path

#: The generalist cellpose-3 model whose weights :mod:`.weights` obtains without a download.
GENERALIST_MODEL = "generalist_cyto"


class SegmentationError(ValueError):
    """Segmentation cannot run with these settings or this model; the message says how to fix it."""


def _load_failure(path: Path, exc: Exception) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in a user's words. torch's own
    message is not passed on: for a pickle that holds code it advises loading with ``weights_only=False``,
    which would run that code (never to be done with a file one does not trust)."""
    import pickle

    try:
        size = Path(path).stat().st_size
    except OSError:
        return "it cannot be read."
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        return ("it holds Python objects besides network weights (a pickled model or code), so it was not "
                "loaded: loading it could run that code.")
    if size == 0:
        return "the file is empty."
    return (f"it is not a PyTorch weights file ({size:,} bytes that torch cannot read as a state dict; "
            "it may be damaged, cut short or another kind of file).")


def load_state_dict(path: Path, version: int, hint: str, **load_kwargs) -> dict:
    """A cellpose model file's weights, loaded without unpickling code (``weights_only``); a file that is not
    a state dict raises :class:`SegmentationError` with ``hint`` (how to get a good one)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, **load_kwargs)
    except Exception as exc:
        raise SegmentationError(f"{path} is not a cellpose-{version} model file: {_load_failure(path, exc)} "
                                f"{hint}") from exc
    if not isinstance(state, dict):
        raise SegmentationError(f"{path} does not hold a state dict of network weights.")
    return state
