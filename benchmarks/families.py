"""Audit cost per model family, and speed-up over the peers used as their documentation shows.

For each family (untrained weights, eval mode, one batch of random crops, the family's default or usual
target layer), on this machine's CPU:

* ``forward``  — the model's forward pass only (``torch.no_grad``): the floor;
* ``ours``     — :class:`napari_gradcamo.audit.cam.CamEngine` ``compute`` + trilinear upsampling;
* ``pgc``      — pytorch-grad-cam's README usage: ``with GradCAM(model=model, target_layers=[layer]) as cam:
  cam(input_tensor=x, targets=None)``;
* ``monai``    — ``monai.visualize.GradCAM(nn_module=model, target_layers=name)(x)`` (3D and 2D);
* ``captum``   — ``captum.attr.LayerGradCam(model, layer).attribute(x, target=classes)`` (raw maps).

"identical" is the max |ours − ReLU(Captum)| over the raw layer-resolution maps (the same Grad-CAM
definition, so it must be ~0). Every time is the median of ``--repeats`` runs after one warm-up.
Run: ``python benchmarks/families.py [--batch 8] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def families():
    """name → (model factory, crop (z, y, x), channels, head, target layer or None for the default)."""
    import torchvision
    from monai.networks.nets import DenseNet, ResNet

    from napari_gradcamo.models.backbones import efficientnet, small_cnn

    return {
        "small-cnn-3d": (lambda: small_cnn(5, 2, width=8), (8, 32, 32), 5, "softmax", "stage1"),
        "monai-resnet-3d": (lambda: ResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=3, n_input_channels=5,
                                           num_classes=2), (8, 32, 32), 5, "softmax", None),
        "monai-densenet-3d": (lambda: DenseNet(3, 5, 2, init_features=8, growth_rate=8, block_config=(2, 2)),
                              (8, 32, 32), 5, "softmax", None),
        "efficientnet-b0-3d": (lambda: efficientnet("efficientnet-b0", 5, 2, (21, 64, 64)), (21, 64, 64), 5,
                               "softmax", None),
        "binary-1-logit-3d": (lambda: small_cnn(5, 1, width=8), (8, 32, 32), 5, "sigmoid-binary", "stage1"),
        "small-cnn-2d": (lambda: small_cnn(5, 2, width=8, dims=2), (1, 64, 64), 5, "softmax", "stage1"),
        "torchvision-resnet18-2d": (lambda: torchvision.models.resnet18(weights=None, num_classes=2), (1, 64, 64), 3,
                                    "softmax", None),
    }


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name, build, crop, channels, head, layer, batch: int, repeats: int) -> dict:
    import torch
    from captum.attr import LayerGradCam
    from monai.visualize import GradCAM as MonaiGradCAM
    from pytorch_grad_cam import GradCAM

    from napari_gradcamo.audit.cam import CamEngine, upsample
    from napari_gradcamo.models.layers import default_target_layer, list_target_layers, model_spatial_dims

    torch.manual_seed(0)
    model = build().eval()
    layer = layer or default_target_layer(list_target_layers(model, crop, channels))
    module = model.get_submodule(layer)
    dims = model_spatial_dims(model)
    x5 = np.random.default_rng(0).random((batch, channels, *crop), dtype=np.float32)
    x = torch.from_numpy(x5[:, :, 0] if dims == 2 else x5)
    row = {"family": name, "layer": layer}

    def forward():
        with torch.no_grad():
            model(x)

    ours_maps = {}

    def ours():
        with CamEngine(model, layer, "gradcam", "cpu", head=head) as engine:
            engine.channels_last = True
            _, targets, raw = engine.compute(x5)
            upsample(raw, crop)
        ours_maps["raw"], ours_maps["targets"] = raw, targets

    def pgc():
        with GradCAM(model=model, target_layers=[module]) as cam:
            cam(input_tensor=x, targets=None)

    def monai():
        MonaiGradCAM(nn_module=model, target_layers=layer)(x)

    def captum():
        target = [int(t) for t in ours_maps["targets"]] if head != "sigmoid-binary" else 0
        ours_maps["captum"] = LayerGradCam(model, module).attribute(x, target=target).detach()

    row["forward_s"] = _median_time(forward, repeats)
    row["ours_s"] = _median_time(ours, repeats)
    for peer, fn in (("pgc", pgc), ("monai", monai), ("captum", captum)):
        if head == "sigmoid-binary" and peer != "captum":
            row[f"{peer}_s"] = float("nan")  # their default target is the argmax of one logit: class 0 always
            continue
        row[f"{peer}_s"] = _median_time(fn, repeats)
    ref = torch.relu(ours_maps["captum"]).squeeze(1).numpy().reshape(ours_maps["raw"].shape)
    if head == "sigmoid-binary":  # Captum explains +z; compare on the cells whose target is the positive class
        keep = ours_maps["targets"] == 1
        ref, raw = ref[keep], ours_maps["raw"][keep]
    else:
        raw = ours_maps["raw"]
    row["identical_max_abs"] = float(np.max(np.abs(raw - ref))) if len(raw) else float("nan")
    model.train()
    return row


def main(argv=None) -> None:
    import pandas as pd
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated family names")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name, spec in families().items():
        if args.only and name not in args.only.split(","):
            continue
        rows.append(measure(name, *spec, batch=args.batch, repeats=args.repeats))
    table = pd.DataFrame(rows)
    table["ours/forward"] = table["ours_s"] / table["forward_s"]
    for peer in ("pgc", "monai", "captum"):
        table[f"speedup_vs_{peer}"] = table[f"{peer}_s"] / table["ours_s"]
    print(f"batch {args.batch}, CPU threads {torch.get_num_threads()}, median of {args.repeats}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
