"""Where the code that builds a network comes from — never from the checkpoint file itself.

A checkpoint names an architecture; the code for it comes only from

1. the built-ins (``small-cnn-3d``, ``efficientnet-b0`` … ``efficientnet-b7``);
2. factories that installed packages register under the entry-point group
   ``napari_gradcamo.architectures`` (name = the architecture a checkpoint names, value =
   ``package.module:function``); installing a package is the user's decision to trust its code;
3. a factory the *user* names at load time (``load_checkpoint(path, trusted_factory="pkg.mod:fn")``,
   ``--trust-factory pkg.mod:fn`` on the command line, or the GUI's confirmation). A checkpoint with
   ``architecture: "custom"`` and ``architecture_kwargs.factory`` is refused unless that exact factory is
   trusted: nothing is imported before that.

A factory is called as ``factory(in_channels=C, num_classes=K, **architecture_kwargs)`` and must return a
``torch.nn.Module``. Keyword arguments from a file are plain JSON values; built-ins accept only their own
documented keywords with checked types; only a trusted factory receives arbitrary keywords.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
from typing import Any, Callable, Sequence

from napari_gradcamo.models.backbones import efficientnet, small_cnn
from napari_gradcamo.models.metadata import CheckpointError, ModelMetadata

EFFICIENTNET_NAMES = tuple(f"efficientnet-b{i}" for i in range(8))
SMALL_CNN = "small-cnn-3d"
VAE = "vae-3d"  # models/vae.py: its forward returns the latent means; class_names name the latent units
SMALL_CNN_2D = "small-cnn-2d"
CUSTOM = "custom"
FACTORY_KEY = "factory"
ENTRY_POINT_GROUP = "napari_gradcamo.architectures"
_FACTORY_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

#: Keyword arguments each built-in accepts from a checkpoint: name → (type, lowest, highest).
_BUILTIN_KWARGS: dict[str, dict[str, tuple[type, float, float]]] = {
    SMALL_CNN: {"width": (int, 1, 512)},
    SMALL_CNN_2D: {"width": (int, 1, 512)},
    VAE: {"width": (int, 1, 512), "features": (int, 1, 4096), "encoder": (str, None, None),
          "skip_connections": (bool, None, None)},  # True: the skip-connection VAE (sc-vae)
    **{name: {"dropout_rate": (float, 0.0, 1.0), "drop_connect_rate": (float, 0.0, 1.0)} for name in EFFICIENTNET_NAMES},
}


def is_vae(meta: ModelMetadata) -> bool:
    """Whether a checkpoint's model is the crop VAE (its "classes" name latent units, not treatments)."""
    return meta.architecture == VAE


def _vae(in_channels: int, num_classes: int, crop_shape: Sequence[int], **kwargs):
    """A VAE over crops; its "classes" are the latent units (see models/vae.py)."""
    from napari_gradcamo.models.vae import build_vae

    return build_vae(in_channels, crop_shape, latent_dim=num_classes, **kwargs)


def _builtin_factory(arch: str, crop_shape: Sequence[int]) -> Callable:
    if arch == SMALL_CNN:
        return small_cnn
    if arch == SMALL_CNN_2D:
        return functools.partial(small_cnn, dims=2)
    if arch == VAE:
        return functools.partial(_vae, crop_shape=crop_shape)
    return functools.partial(efficientnet, arch, crop_shape=crop_shape)


def _check_builtin_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    allowed = _BUILTIN_KWARGS[arch]
    for key, value in kwargs.items():
        if key not in allowed:
            raise CheckpointError(
                f"architecture_kwargs: '{key}' is not a keyword of '{arch}'; it accepts "
                f"{', '.join(allowed) or 'none'}. Remove it from the checkpoint metadata (or --arch-kwargs)."
            )
        kind, low, high = allowed[key]
        if kind is bool:
            if not isinstance(value, bool):
                raise CheckpointError(f"architecture_kwargs: '{key}' = {value!r} must be true or false for '{arch}'.")
            continue
        if kind is str:
            if not isinstance(value, str):
                raise CheckpointError(f"architecture_kwargs: '{key}' = {value!r} must be text for '{arch}'.")
            continue
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
        if not ok_type or not low <= value <= high:
            raise CheckpointError(
                f"architecture_kwargs: '{key}' = {value!r} must be {'a whole number' if kind is int else 'a number'} "
                f"in {low:g}..{high:g} for '{arch}'."
            )


def registered_architectures() -> dict[str, importlib.metadata.EntryPoint]:
    """Architectures that installed packages register under :data:`ENTRY_POINT_GROUP` (not loaded yet)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def checked_factory_spec(spec: Any, what: str = "factory") -> str:
    """A ``package.module:function`` string, or :class:`CheckpointError`."""
    if not isinstance(spec, str) or not _FACTORY_SPEC.match(spec.strip()):
        raise CheckpointError(f"{what} {spec!r} must look like 'package.module:function'.")
    return spec.strip()


def import_factory(spec: str) -> Callable:
    """Import the user-trusted factory ``spec`` (only ever called for a trusted spec)."""
    module_name, _, attr = checked_factory_spec(spec).partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as error:  # ImportError, AttributeError, or anything the module raises at import
        raise CheckpointError(f"Cannot import model factory '{spec}': {type(error).__name__}: {error}. "
                              "Install the package that defines it.") from None
    if not callable(factory):
        raise CheckpointError(f"Model factory '{spec}' is not callable.")
    return factory


#: Keyword names a factory may use for the input channels and the number of outputs (first match wins).
CHANNEL_KWARGS = ("in_channels", "n_input_channels", "n_channels", "num_channels", "in_chans", "input_channels")
CLASS_KWARGS = ("num_classes", "n_classes", "out_channels", "num_outputs", "n_outputs", "out_features")


def call_factory(factory: Callable, in_channels: int, n_outputs: int, kwargs: dict, name: str = "factory"):
    """Call ``factory`` with ``kwargs`` plus the channel and output counts under the first of
    :data:`CHANNEL_KWARGS` / :data:`CLASS_KWARGS` its signature names (unless ``kwargs`` already gives one;
    a zero-argument factory, or one taking only ``**kwargs``, gets neither). Any failure, or a result that
    is not a torch module, becomes a :class:`CheckpointError`."""
    import inspect

    import torch

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    call = dict(kwargs)
    for names, value in ((CHANNEL_KWARGS, in_channels), (CLASS_KWARGS, n_outputs)):
        found = next((n for n in names if n in params), None)
        if found and not any(n in call for n in names):
            call[found] = value
    try:
        model = factory(**call)
    except Exception as error:  # a third-party factory may raise anything
        raise CheckpointError(
            f"Building the network with '{name}' failed ({type(error).__name__}: {error}) when called with "
            f"{sorted(call)}. Put the arguments it needs in architecture_kwargs (channel/class counts are passed "
            f"as {CHANNEL_KWARGS[0]}/{CLASS_KWARGS[0]} when its signature names them)."
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"Model factory '{name}' returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def requested_factory(metadata: ModelMetadata) -> str | None:
    """The factory a ``custom`` checkpoint asks for (validated text, nothing imported), else None."""
    if metadata.architecture != CUSTOM:
        return None
    return checked_factory_spec(metadata.architecture_kwargs.get(FACTORY_KEY), "architecture_kwargs.factory")


def factory_location(spec: str) -> str:
    """Where the module of ``spec`` would be imported from — found without importing (or running) anything:
    the top-level package is located by the import system's finders, the rest by path."""
    import importlib.util
    from pathlib import Path

    module_name = checked_factory_spec(spec).partition(":")[0]
    top, *rest = module_name.split(".")
    try:
        found = importlib.util.find_spec(top)  # a top-level name: located, not executed
    except (ImportError, ValueError):
        found = None
    if found is None:
        return f"module '{module_name}' is not installed (nothing to import)"
    if not rest:
        return found.origin or "a built-in module"
    for folder in found.submodule_search_locations or []:
        base = Path(folder, *rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return str(candidate)
    return f"inside {found.origin} (file of '{module_name}' not found by path)"


def untrusted_message(spec: str, source: str = "") -> str:
    return (
        f"The checkpoint{' ' + source if source else ''} asks to run the Python function '{spec}' to build its "
        "model. Nothing was imported or run. Only if you trust that code, load it with "
        f"--trust-factory {spec} (Python: load_checkpoint(path, trusted_factory='{spec}'))."
    )


def build_model(metadata: ModelMetadata, trusted_factory: str | None = None, source: str = ""):
    """Build an untrained network for ``metadata`` (weights are loaded separately).

    ``trusted_factory``: the ``package.module:function`` the user trusts for a ``custom`` checkpoint.
    """
    from napari_gradcamo.models.heads import output_count

    arch = metadata.architecture
    kwargs = dict(metadata.architecture_kwargs)
    in_ch, n_cls = len(metadata.channel_names), output_count(metadata.head, len(metadata.class_names))
    if arch in _BUILTIN_KWARGS:
        _check_builtin_kwargs(arch, kwargs)
        return call_factory(_builtin_factory(arch, metadata.crop_shape), in_ch, n_cls, kwargs)
    if arch == CUSTOM:
        spec = requested_factory(metadata)
        if trusted_factory is None or checked_factory_spec(trusted_factory, "--trust-factory") != spec:
            raise CheckpointError(untrusted_message(spec, source))
        kwargs.pop(FACTORY_KEY)
        return call_factory(import_factory(spec), in_ch, n_cls, kwargs, spec)
    registered = registered_architectures()
    if arch in registered:
        try:
            factory = registered[arch].load()
        except Exception as error:
            raise CheckpointError(f"The installed architecture '{arch}' ({registered[arch].value}) failed to load: "
                                  f"{type(error).__name__}: {error}. Reinstall the package that provides it.") from None
        return call_factory(factory, in_ch, n_cls, kwargs, registered[arch].value)
    raise CheckpointError(
        f"Unknown architecture '{arch}'. Known: {', '.join(EFFICIENTNET_NAMES)}, {SMALL_CNN}, {SMALL_CNN_2D}, {VAE}"
        + (f", {', '.join(sorted(registered))} (installed packages)" if registered else "")
        + f", or '{CUSTOM}' with a factory you trust (--trust-factory). A lab's own architecture can be "
        f"registered by its package under the entry-point group '{ENTRY_POINT_GROUP}'."
    )


def check_layer(architecture: str, kwargs: dict, crop_shape: Sequence[int], layer: str | None,
                trusted_factory: str | None = None) -> None:
    """Build the architecture once (cheaply, before any crop is cut) to refuse an unknown architecture,
    bad keyword arguments or a ``layer`` it does not have, naming the layers it has."""
    model = build_model(ModelMetadata(architecture, ["a", "b"], ["c"], list(crop_shape), architecture_kwargs=kwargs),
                        trusted_factory=trusted_factory)
    names = [name for name, _ in model.named_modules() if name]
    if layer is not None and layer not in names:
        raise ValueError(f"--layer {layer!r} is not a layer of {architecture}; its layers include "
                         f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''} (see 'gradcamo layers').")
