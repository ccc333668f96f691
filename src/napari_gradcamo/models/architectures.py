"""The architectures a checkpoint can name: MONAI's 3D EfficientNet, a small 3D CNN, or a custom factory."""

from __future__ import annotations

import importlib
from collections import OrderedDict
from typing import Callable, Sequence

from napari_gradcamo.models.metadata import CheckpointError, ModelMetadata

EFFICIENTNET_NAMES = tuple(f"efficientnet-b{i}" for i in range(8))
SMALL_CNN = "small-cnn-3d"
SMALL_CNN_2D = "small-cnn-2d"
#: Entry-point group through which an installed package registers architectures by name (zero-argument
#: factories or factories taking channel/class counts; see :func:`call_factory`).
ENTRY_POINT_GROUP = "napari_gradcamo.architectures"
CUSTOM = "custom"

# MBConv stage definitions of EfficientNet-B0 (Tan & Le, 2019); b1..b7 scale them by width and depth.
_EFFICIENTNET_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]



def _small_cnn(in_channels: int, num_classes: int, width: int = 16, dims: int = 3):
    """A small, fast CNN: three conv stages (3D: z kept at stage 1), global average pooling, linear head."""
    import torch.nn as nn

    conv, norm, maxpool, avgpool = ((nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d) if dims == 3 else
                                    (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d))

    def stage(cin, cout, pool):
        return nn.Sequential(
            conv(cin, cout, 3, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=False),
            conv(cout, cout, 3, padding=1, bias=False),
            norm(cout),
            nn.ReLU(inplace=False),
            maxpool(pool[3 - dims:]) if pool else nn.Identity(),
        )

    return nn.Sequential(
        OrderedDict(
            stage1=stage(in_channels, width, (1, 2, 2)),
            stage2=stage(width, 2 * width, (2, 2, 2)),
            stage3=stage(2 * width, 4 * width, None),
            pool=avgpool(1),
            flatten=nn.Flatten(),
            head=nn.Linear(4 * width, num_classes),
        )
    )


def _efficientnet(name: str, in_channels: int, num_classes: int, crop_shape: Sequence[int], **kwargs):
    """MONAI's 3D EfficientNet with 'same' padding sized for the crop (works at 21 slices)."""
    from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params

    width, depth, _, dropout, dropconnect = efficientnet_params[name]
    return EfficientNet(
        blocks_args_str=_EFFICIENTNET_BLOCKS,
        spatial_dims=3,
        in_channels=in_channels,
        num_classes=num_classes,
        width_coefficient=width,
        depth_coefficient=depth,
        dropout_rate=kwargs.pop("dropout_rate", dropout),
        image_size=int(min(crop_shape)),
        drop_connect_rate=kwargs.pop("drop_connect_rate", dropconnect),
        **kwargs,
    )


def _import_factory(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CheckpointError(f"Factory '{spec}' must look like 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as error:
        raise CheckpointError(f"Cannot import model factory '{spec}': {error}. Install the package that defines it.") from error


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
            f"Model factory '{name}' failed when called with {sorted(call)}: {type(error).__name__}: {error}. "
            f"Put the arguments it needs in architecture_kwargs (channel/class counts are passed as "
            f"{CHANNEL_KWARGS[0]}/{CLASS_KWARGS[0]} when its signature names them)."
        ) from error
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"Model factory '{name}' returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def build_model(metadata: ModelMetadata):
    """Build an untrained network for ``metadata`` (weights are loaded separately)."""
    from napari_gradcamo.models.heads import output_count

    arch = metadata.architecture
    kwargs = dict(metadata.architecture_kwargs)
    in_ch, n_cls = len(metadata.channel_names), output_count(metadata.head, len(metadata.class_names))
    if arch in EFFICIENTNET_NAMES:
        return _efficientnet(arch, in_ch, n_cls, metadata.crop_shape, **kwargs)
    if arch in (SMALL_CNN, SMALL_CNN_2D):
        return _small_cnn(in_ch, n_cls, dims=3 if arch == SMALL_CNN else 2, **kwargs)
    if arch == CUSTOM:
        factory = kwargs.pop("factory", None)
        if not factory:
            raise CheckpointError("A 'custom' architecture needs architecture_kwargs.factory = 'package.module:function'.")
        return call_factory(_import_factory(factory), in_ch, n_cls, kwargs, factory)
    registered = registered_architectures()
    if arch in registered:
        try:
            factory = registered[arch].load()
        except Exception as error:  # a broken installed package
            raise CheckpointError(f"Architecture '{arch}' ({registered[arch].value}) cannot be loaded: {error}") from error
        return call_factory(factory, in_ch, n_cls, kwargs, registered[arch].value)
    raise CheckpointError(
        f"Unknown architecture '{arch}'. Known: {', '.join(EFFICIENTNET_NAMES)}, {SMALL_CNN}, {SMALL_CNN_2D}, "
        f"{', '.join(registered) + ', ' if registered else ''}or '{CUSTOM}' with a factory "
        f"(installed packages register names under the entry-point group '{ENTRY_POINT_GROUP}')."
    )


def registered_architectures() -> dict:
    """Architectures registered by installed packages: name → entry point."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
