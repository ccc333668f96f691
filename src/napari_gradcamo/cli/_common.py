"""Pieces shared by the subcommands: a progress bar and the options that come from settings dataclasses."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import math
import signal
import sys
from pathlib import Path

from napari_gradcamo.audit.run import AuditSettings
from napari_gradcamo.audit.scoring import SCORE_KINDS
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
    g.add_argument("--batch-size", type=positive_int, default=d("batch_size"))
    g.add_argument("--device", type=device_name, default=d("device"), help="auto, cpu, cuda[:N] or mps")
    g.add_argument("--threshold", type=finite_float, default=d("threshold"),
                   help="flag cells whose --flag-on score is below this (default: below chance)")
    g.add_argument("--flag-on", choices=tuple(SCORE_KINDS), default=d("flag_on"),
                   help="score the threshold applies to: normalised (0 = chance), lift (1 = chance) or raw "
                        "gradcamo (the paper: --flag-on gradcamo --threshold 0.5)")
    g.add_argument("--occlusion", action="store_true",
                   help="also occlude each cell and its surroundings: drop in the target class probability")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=d("precision"),
                   help="arithmetic of the model's layers: fp32 (exact), bf16 (faster on CPUs with AMX/AVX512-BF16 "
                        "and on GPUs) or fp16 (GPUs); scores change slightly (docs/performance.md)")
    g.add_argument("--channel-map", default=None, help="image channel index per model channel, e.g. 0,1,2,3,4")
    g.add_argument("--planes", type=int, default=d("planes"),
                   help="2D model on a z-stack: explain N planes around each cell's centre, plane by plane")


def audit_settings(args) -> AuditSettings:
    try:
        channel_map = [int(i) for i in args.channel_map.split(",")] if args.channel_map else None
    except ValueError:
        raise ValueError(f"--channel-map {args.channel_map!r} must be whole numbers separated by commas, "
                         "e.g. 0,1,2,3,4.") from None
    return AuditSettings(method=args.method, target_layer=args.layer, target_class=args.target_class,
                         batch_size=args.batch_size, device=args.device, threshold=args.threshold,
                         channel_map=channel_map, flag_on=args.flag_on, occlusion=args.occlusion,
                         planes=args.planes, precision=args.precision)


# ------------------------------------------------------------------ option types: refuse, never coerce


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def unit_float(text: str) -> float:
    """argparse type: a finite number in 0..1."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must lie in 0..1")
    return value


def device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda, cuda:N or mps (whether it exists is checked by :func:`check_device`)."""
    name = text.strip().lower()
    base, _, index = name.partition(":")
    if name in ("auto", "cpu", "mps", "cuda") or (base == "cuda" and index.isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")


def check_device(name: str) -> None:
    """Refuse a device this machine does not have (before any compute), naming the ones it has."""
    import torch

    base, _, index = name.partition(":")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    available = base in ("auto", "cpu") or (base == "mps" and has_mps) or (
        base == "cuda" and torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count())
    if not available:
        have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if has_mps else [])
        raise ValueError(f"--device {name}: this machine has no such device (it has {', '.join(have)}); "
                         "use --device auto or cpu.")


def add_trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-factory", default=None, metavar="PKG.MOD:FN",
                   help="run this Python function to build a 'custom' checkpoint's network — only if you trust "
                        "its code (a checkpoint never runs code on its own)")


def output_stem(path: str | Path) -> str:
    """A file stem unique per input file, not only per name: ``p1/field.tif`` and ``p2/field.tif`` differ."""
    path = Path(path)
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{path.name.split('.')[0]}-{digest}"


@contextlib.contextmanager
def interrupts_cancel(token):
    """While inside, Ctrl-C (SIGINT) and SIGTERM cancel ``token`` so the finished work can be written;
    a second signal stops at once."""
    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt
        print("\ngradcamo: interrupted — finishing the current batch and writing the finished rows "
              "(signal again to stop at once)", file=sys.stderr)
        token.cancel()

    for s in signals:
        signal.signal(s, handler)
    try:
        yield token
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
