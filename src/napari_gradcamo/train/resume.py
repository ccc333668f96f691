"""The resume state of ``gradcamo train``: written atomically after every epoch, read back with checks.

The file holds tensors and JSON text only (``torch.load(weights_only=True)`` refuses anything else), so a
pickled or foreign ``resume.pt`` is refused with a message, never executed.
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_gradcamo.io.atomic import atomic_path

#: Keys every resume state has, and those stored as JSON text.
REQUIRED_KEYS = ("model", "optimizer", "schedule", "numpy_rng", "torch_rng", "history", "best_epoch",
                 "best_val_loss", "epoch", "bad_epochs", "config", "split")
JSON_KEYS = ("numpy_rng", "history", "config", "split")


class ResumeError(ValueError):
    """A resume state cannot be used; the message names the problem and the fix."""


def save_resume(path: Path, state: dict) -> Path:
    import torch

    with atomic_path(path) as temp:
        torch.save(state, temp)
    return path


def load_resume(path: Path) -> dict:
    """The resume state at ``path`` with its JSON fields decoded; :class:`ResumeError` when unusable."""
    import torch

    fix = f"delete {path.name} (or the whole folder) and train again without --resume"
    if not path.is_file():
        raise ResumeError(f"Nothing to resume: {path} does not exist; train without --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled objects, truncated or foreign files
        raise ResumeError(f"{path} is not a resume state of this program ({type(error).__name__}); "
                          f"it is corrupt, truncated or foreign: {fix}.") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise ResumeError(f"{path} lacks parts of a resume state (a foreign or older file): {fix}.")
    try:
        return {**state, **{k: json.loads(state[k]) for k in JSON_KEYS}}
    except (TypeError, json.JSONDecodeError):
        raise ResumeError(f"{path} holds unreadable settings: {fix}.") from None
