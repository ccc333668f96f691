"""Checkpoint files: safetensors weights + JSON metadata in the header (or a .pt state dict + sidecar JSON).

Never pickle: a pickled whole model is refused. Nothing in the file decides what code runs: the metadata is
validated data, and a ``custom`` architecture's factory runs only when the user trusts it by name
(see :mod:`napari_gradcamo.models.architectures`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from napari_gradcamo.io.atomic import atomic_path
from napari_gradcamo.models.architectures import build_model, requested_factory
from napari_gradcamo.models.metadata import (  # noqa: F401  (normalize_crops: callers import it from here too)
    CheckpointError,
    ModelBundle,
    ModelMetadata,
    normalize_crops,
)

METADATA_KEY = "napari_gradcamo"


def save_checkpoint(path: str | Path, model, metadata: ModelMetadata) -> Path:
    """Write ``model``'s weights and ``metadata`` to one ``.safetensors`` file.

    The metadata goes into the safetensors header as JSON; nothing is pickled. The file is written to a
    temporary name and renamed into place.

    Parameters
    ----------
    path : str or Path
        Where to write (its folder is created).
    model : torch.nn.Module
        The network; its ``state_dict()`` is saved.
    metadata : ModelMetadata
        Architecture, classes, channels, crop shape and the rest that :func:`load_checkpoint` needs.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> from napari_gradcamo.models.bundled import bundled_model_path
    >>> bundle = ng.load_checkpoint(bundled_model_path("honest"))
    >>> ng.save_checkpoint("copy.safetensors", bundle.model, bundle.metadata).name
    'copy.safetensors'
    >>> ng.load_checkpoint("copy.safetensors").metadata == bundle.metadata
    True
    """
    import torch
    from safetensors.torch import save_file

    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be a file path (str or pathlib.Path), not {type(path).__name__}.")
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
    if isinstance(metadata, dict):
        metadata = ModelMetadata.from_dict(metadata, "the metadata argument")
    if not isinstance(metadata, ModelMetadata):
        raise CheckpointError(f"metadata must be a ModelMetadata (or a dict of its fields), not {type(metadata).__name__}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata={METADATA_KEY: metadata.to_json()})
    return path


def _read_safetensors(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError and OSError variants
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file ({error}); the file is corrupt or truncated. "
            "Copy it again or re-export it with napari_gradcamo.models.checkpoint.save_checkpoint."
        ) from error
    if METADATA_KEY in header:
        return state, _parse_json(header[METADATA_KEY], f"the metadata inside {path.name}")
    return state, None


def _parse_json(text: str, what: str):
    from napari_gradcamo.io.limits import MAX_JSON_DEPTH, json_depth, loads_json

    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{what} is not valid JSON ({error}); rewrite it with save_checkpoint().") from None
    except RecursionError:  # deeper than Python's limit: say so instead of a RecursionError traceback
        loads_json(text, what, CheckpointError)
        raise CheckpointError(f"{what} nests its JSON too deeply; rewrite it with save_checkpoint().") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} nests its JSON more than {MAX_JSON_DEPTH} levels deep; it is not metadata "
                              "this program wrote. Rewrite it with save_checkpoint().")
    return value


def _read_state_dict_pt(path: Path):
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Refused {path.name}: it is a pickled Python object (e.g. a whole model saved with torch.save(model)), "
            "and loading it could run arbitrary code. Save only the weights: "
            "torch.save(model.state_dict(), 'model.pt') plus a JSON metadata file, or use save_checkpoint()."
        ) from error
    except Exception as error:  # torch raises RuntimeError, EOFError, OSError, ValueError … on foreign files
        raise CheckpointError(f"{path.name} is not a readable PyTorch weights file ({type(error).__name__}: {error}); "
                              "it looks corrupt or is not a state dict.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict (a mapping of names to tensors).")
    return state


def _sidecar_metadata(path: Path) -> dict | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return None
    try:
        text = sidecar.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"Metadata file {sidecar.name} cannot be read as text: {error}.") from None
    return _parse_json(text, f"Metadata file {sidecar.name}")


def _read_checkpoint(path: Path):
    """(state dict, validated metadata) of a checkpoint file; builds nothing, imports nothing."""
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} is a folder, not a file; give the .safetensors file inside it.")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
    elif path.suffix in (".pt", ".pth", ".bin"):
        state, meta = _read_state_dict_pt(path), None
    else:
        raise CheckpointError(f"{path.name}: unknown checkpoint type; use .safetensors (preferred) or a .pt state dict.")
    if meta is None:
        meta = _sidecar_metadata(path)
    if meta is None:
        raise CheckpointError(
            f"{path.name} carries no napari-gradcamo metadata and no {path.with_suffix('.json').name} lies beside it; "
            "write one with architecture, class_names, channel_names and crop_shape."
        )
    return state, ModelMetadata.from_dict(meta, path.name)


def read_metadata(path: str | Path) -> ModelMetadata:
    """The validated metadata of a checkpoint, without building (or importing) anything."""
    return _read_checkpoint(Path(path))[1]


def checkpoint_factory(path: str | Path) -> str | None:
    """The ``package.module:function`` a ``custom`` checkpoint (or bioimage.io package) asks to run (nothing
    imported), else None."""
    from napari_gradcamo.models import bioimageio

    if bioimageio.is_package(path):
        return bioimageio.package_factory(path)
    return requested_factory(read_metadata(path))


def load_checkpoint(path: str | Path, trusted_factory: str | None = None) -> ModelBundle:
    """Load a classifier safely from ``.safetensors`` (metadata inside or beside), a ``.pt`` state dict, or a
    bioimage.io model package (.zip, its folder or rdf.yaml; :mod:`napari_gradcamo.models.bioimageio`).

    ``trusted_factory``: for a ``custom`` checkpoint, the ``package.module:function`` you trust to build its
    network; without it (or when it differs from the checkpoint's) the checkpoint is refused before anything
    is imported.

    Parameters
    ----------
    path : str or Path
        A ``.safetensors`` file, a ``.pt``/``.pth`` state dict with a ``.json`` of metadata beside it, or a
        bioimage.io package.
    trusted_factory : str, optional
        ``"package.module:function"``: the only factory a ``custom`` checkpoint may call.

    Returns
    -------
    ModelBundle
        ``model`` (a ``torch.nn.Module`` in eval mode on the CPU), ``metadata`` (:class:`ModelMetadata`) and
        ``source`` (the path).

    Raises
    ------
    CheckpointError
        A pickled, corrupt or unknown file, invalid metadata, an untrusted factory, weights that do not fit.

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> from napari_gradcamo.models.bundled import bundled_model_path
    >>> bundle = ng.load_checkpoint(bundled_model_path("honest"))   # the bundled demo model
    >>> bundle.metadata.class_names, bundle.metadata.crop_shape
    (['control', 'treated'], [8, 32, 32])
    """
    from napari_gradcamo.models import bioimageio

    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be a checkpoint file path (str or pathlib.Path), not {type(path).__name__}.")
    if trusted_factory is not None and not isinstance(trusted_factory, str):
        raise CheckpointError(f"trusted_factory must be 'package.module:function' text or None, not {trusted_factory!r}.")
    path = Path(path)
    if bioimageio.is_package(path):
        return bioimageio.import_package(path, trusted_factory)
    state, metadata = _read_checkpoint(path)
    model = build_model(metadata, trusted_factory, path.name)
    state = strip_data_parallel_prefix(state, model.state_dict().keys(), path.name)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"The weights in {path.name} do not fit architecture '{metadata.architecture}' "
            f"with {len(metadata.channel_names)} channels and {len(metadata.class_names)} classes: {error}"
        ) from error
    model.eval()
    return ModelBundle(model, metadata, str(path))


#: The prefix torch.nn.DataParallel / DistributedDataParallel put on every key of a wrapped model's state dict.
DATA_PARALLEL_PREFIX = "module."


def strip_data_parallel_prefix(state: dict, expected_keys, name: str = "the checkpoint") -> dict:
    """``state`` without the ``module.`` prefix a ``DataParallel``-wrapped model saves, when every key has it
    and the network expects none (said with a warning); else ``state`` unchanged."""
    import warnings

    prefix = DATA_PARALLEL_PREFIX
    expected = set(expected_keys)
    if not state or not all(k.startswith(prefix) for k in state) or any(k.startswith(prefix) for k in expected):
        return state
    stripped = {k[len(prefix):]: v for k, v in state.items()}
    if not set(stripped) & expected:
        return state
    warnings.warn(f"{name}: its weights were saved from a DataParallel-wrapped model (every key starts with "
                  f"'{prefix}'); the prefix was removed to load them.", UserWarning, stacklevel=3)
    return stripped
