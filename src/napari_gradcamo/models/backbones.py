"""The built-in backbones (torch and MONAI imported when one is built): the small CNN and MONAI's 3D
EfficientNet. :mod:`.architectures` names them for checkpoints; :mod:`.vae` uses them as encoders."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

# MBConv stage definitions of EfficientNet-B0 (Tan & Le, 2019); b1..b7 scale them by width and depth.
EFFICIENTNET_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


def small_cnn(in_channels: int, num_classes: int, width: int = 16, dims: int = 3):
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


def efficientnet(name: str, in_channels: int, num_classes: int, crop_shape: Sequence[int], **kwargs):
    """MONAI's 3D EfficientNet with 'same' padding sized for the crop (works at 21 slices)."""
    from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params

    width, depth, _, dropout, dropconnect = efficientnet_params[name]
    return EfficientNet(
        blocks_args_str=EFFICIENTNET_BLOCKS,
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
