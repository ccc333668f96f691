"""The architectures a checkpoint can name: MONAI's 3D EfficientNet, a small 3D CNN, or a custom factory."""

from __future__ import annotations

import importlib
from collections import OrderedDict
from typing import Callable, Sequence

from napari_gradcamo.models.metadata import CheckpointError, ModelMetadata

EFFICIENTNET_NAMES = tuple(f"efficientnet-b{i}" for i in range(8))
SMALL_CNN = "small-cnn-3d"
VAE = "vae-3d"  # models/vae.py: its forward returns the latent means; class_names name the latent units
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



def _small_cnn(in_channels: int, num_classes: int, width: int = 16):
    """A small, fast 3D CNN: three conv stages (z kept at stage 1), global average pooling, linear head."""
    import torch.nn as nn

    def stage(cin, cout, pool):
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=False),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=False),
            nn.MaxPool3d(pool) if pool else nn.Identity(),
        )

    return nn.Sequential(
        OrderedDict(
            stage1=stage(in_channels, width, (1, 2, 2)),
            stage2=stage(width, 2 * width, (2, 2, 2)),
            stage3=stage(2 * width, 4 * width, None),
            pool=nn.AdaptiveAvgPool3d(1),
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


def build_model(metadata: ModelMetadata):
    """Build an untrained network for ``metadata`` (weights are loaded separately)."""
    arch = metadata.architecture
    kwargs = dict(metadata.architecture_kwargs)
    in_ch, n_cls = len(metadata.channel_names), len(metadata.class_names)
    if arch in EFFICIENTNET_NAMES:
        return _efficientnet(arch, in_ch, n_cls, metadata.crop_shape, **kwargs)
    if arch == SMALL_CNN:
        return _small_cnn(in_ch, n_cls, **kwargs)
    if arch == VAE:
        from napari_gradcamo.models.vae import build_vae

        return build_vae(in_ch, metadata.crop_shape, latent_dim=n_cls, **kwargs)
    if arch == CUSTOM:
        factory = kwargs.pop("factory", None)
        if not factory:
            raise CheckpointError("A 'custom' architecture needs architecture_kwargs.factory = 'package.module:function'.")
        return _import_factory(factory)(in_channels=in_ch, num_classes=n_cls, **kwargs)
    raise CheckpointError(
        f"Unknown architecture '{arch}'. Known: {', '.join(EFFICIENTNET_NAMES)}, {SMALL_CNN}, {VAE}, "
        f"or '{CUSTOM}' with a factory."
    )
