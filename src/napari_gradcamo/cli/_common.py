"""Pieces shared by the subcommands: a progress bar and the options that come from settings dataclasses."""

from __future__ import annotations

import argparse
import dataclasses

from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.segment.cellpose import SegmentationSettings


def progress_bar(description: str, unit: str = "step"):
    """A tqdm bar and a ``progress(done, total, message)`` callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True)

    def update(done: int, total: int, message: str = "") -> None:
        bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return bar, update


def _default(cls, name: str):
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def add_segmentation_options(group) -> None:
    """cellpose options; their defaults are :class:`SegmentationSettings`'s."""
    d = lambda name: _default(SegmentationSettings, name)  # noqa: E731
    group.add_argument("--cellpose-model", default=d("model"),
                       help="named cellpose model (needs internet once), a model file, or generalist_cyto (offline)")
    group.add_argument("--nucleus-channel", type=int, default=d("nucleus_channel"))
    group.add_argument("--cyto-channel", type=int, default=d("cyto_channel"))
    group.add_argument("--diameter", type=float, default=d("diameter"),
                       help="cell diameter in pixels (default: the model's own)")
    group.add_argument("--mode", choices=("stitch2d", "3d"), default=d("mode"))
    group.add_argument("--stitch-threshold", type=float, default=d("stitch_threshold"))


def segmentation_settings(args) -> SegmentationSettings:
    return SegmentationSettings(model=args.cellpose_model, nucleus_channel=args.nucleus_channel,
                                cyto_channel=args.cyto_channel, diameter=args.diameter, mode=args.mode,
                                stitch_threshold=args.stitch_threshold)


def add_audit_options(p: argparse.ArgumentParser) -> None:
    """Grad-CAM options; their defaults are :class:`AuditSettings`'s."""
    d = lambda name: _default(AuditSettings, name)  # noqa: E731
    g = p.add_argument_group("Grad-CAM")
    g.add_argument("--method", default=d("method"),
                   help="gradcam, gradcam++, hirescam, layercam, xgradcam or eigencam; on 2D models also "
                        "scorecam and ablationcam")
    g.add_argument("--layer", default=d("target_layer"), help="target layer (see 'gradcamo layers'); default: the model's")
    g.add_argument("--target-class", default=d("target_class"), help="class name or index; default: the predicted class")
    g.add_argument("--batch-size", type=int, default=d("batch_size"))
    g.add_argument("--device", default=d("device"), help="auto, cpu, cuda or mps")
    g.add_argument("--threshold", type=float, default=d("threshold"), help="flag cells with Grad-CAMO below this")
    g.add_argument("--channel-map", default=None, help="image channel index per model channel, e.g. 0,1,2,3,4")
    g.add_argument("--planes", type=int, default=d("planes"),
                   help="2D model on a z-stack: explain N planes around each cell's centre, plane by plane")


def audit_settings(args) -> AuditSettings:
    channel_map = [int(i) for i in args.channel_map.split(",")] if args.channel_map else None
    return AuditSettings(method=args.method, target_layer=args.layer, target_class=args.target_class,
                         batch_size=args.batch_size, device=args.device, threshold=args.threshold,
                         channel_map=channel_map, planes=args.planes)
