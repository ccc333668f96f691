"""The crop-cache options and loader shared by ``gradcamo train`` and ``gradcamo profile``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_gradcamo.cli._common import add_segmentation_options, progress_bar, segmentation_settings, unit_float


def add_cache_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crops and masks")
    g.add_argument("--cache", default=None, help="crop cache folder (default: OUT/crops); reused while the manifest is unchanged")
    g.add_argument("--max-padded-fraction", type=unit_float, default=0.5,
                   help="skip cells whose crop lies more than this fraction (0..1) outside the image")
    add_segmentation_options(g)


def load_cache(args, manifest_path, out: Path, crop_shape, channel_names=None, class_names=None):
    from napari_gradcamo.crops.cache import build_cache
    from napari_gradcamo.segment.field_list import read_manifest

    manifest = read_manifest(manifest_path)
    bar, update = progress_bar("crops", "image")
    try:
        cache = build_cache(manifest, crop_shape, Path(args.cache) if args.cache else out / "crops",
                            channel_names=channel_names, class_names=class_names,
                            max_padded_fraction=args.max_padded_fraction, segmentation=segmentation_settings(args),
                            progress=update)
    finally:
        bar.close()
    return manifest, cache
