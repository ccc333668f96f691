"""napari layer helpers shared by the widgets: layers → core Image, world positions, owned CAM layers."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_gradcamo.io.images import Image, ImageError, make_image

ROLE = "gradcamo_role"  # layer.metadata key naming what a layer is to this plugin
CHANNEL = "gradcamo_channel"  # layer.metadata key: the stain shown by a single-channel layer
CHANNEL_NAMES = "channel_names"  # layer.metadata key: stains of a multi-channel layer
CHANNEL_AXIS = "channel_axis"  # layer.metadata key: the channel axis of a multi-channel layer
ROLE_CELL_CAM = "cell_cam"
ROLE_ALL_CAM = "all_cells_cam"
ROLE_SEGMENTATION = "segmentation"
ROLE_OUTLINE = "selected_outline"
CELL_CAM_NAME = "Grad-CAM (selected cell)"
ALL_CAM_NAME = "Grad-CAM (all cells)"
OUTLINE_NAME = "selected cell (outline)"


def image_layers(viewer) -> list:
    from napari.layers import Image as ImageLayer

    return [l for l in viewer.layers if isinstance(l, ImageLayer) and not l.rgb and l.metadata.get(ROLE) is None]


def labels_layers(viewer) -> list:
    from napari.layers import Labels

    return [l for l in viewer.layers if isinstance(l, Labels) and l.metadata.get(ROLE) != ROLE_OUTLINE]


def level0(data):
    """The full-resolution array of a (possibly multiscale) layer's data."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


def channel_axis_of(layer) -> int | None:
    """The channel axis of a 4D layer (metadata, else the smallest axis of ≤ 8), None for 2D/3D layers."""
    shape = np.shape(level0(layer.data))
    if len(shape) != 4:
        return None
    axis = layer.metadata.get(CHANNEL_AXIS)
    if axis is not None:
        return int(axis)
    axis = int(np.argmin(shape))
    return axis if shape[axis] <= 8 else 0


def channel_names_of(layers: Sequence) -> list[str]:
    """The stains the chosen layers provide, in order (without reading pixel data)."""
    if len(layers) == 1 and channel_axis_of(layers[0]) is not None:
        layer = layers[0]
        n = np.shape(level0(layer.data))[channel_axis_of(layer)]
        names = list(layer.metadata.get(CHANNEL_NAMES) or [])
        return names if len(names) == n else [f"ch{i}" for i in range(n)]
    names = [str(l.metadata.get(CHANNEL) or l.name) for l in layers]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def spatial_scale(layer) -> tuple[float, float, float]:
    scale = [float(s) for s in layer.scale]
    return tuple(([1.0] + scale[-2:]) if len(scale) == 2 or layer.ndim == 2 else scale[-3:])


def spatial_translate(layer) -> tuple[float, float, float]:
    tr = [float(t) for t in layer.translate]
    return tuple(([0.0] + tr[-2:]) if layer.ndim == 2 else tr[-3:])


def image_from_layers(layers: Sequence) -> Image:
    """A core :class:`Image` (``CZYX`` float32 copy) from one multi-channel layer or several 2D/3D layers."""
    if not layers:
        raise ImageError("No image layer is selected; tick the layers that hold the stains.")
    names = channel_names_of(layers)
    first = layers[0]
    if len(layers) == 1 and channel_axis_of(first) is not None:
        axis = channel_axis_of(first)
        data = np.moveaxis(np.asarray(level0(first.data)), axis, 0)
        spatial_layer_axes = [a for a in range(4) if a != axis]
        voxel = tuple(float(first.scale[a]) for a in spatial_layer_axes)
        return make_image(data, "CZYX", names, voxel, source=first.name)
    shapes = {tuple(np.shape(level0(l.data))) for l in layers}
    if len(shapes) != 1:
        detail = ", ".join(f"{l.name} {tuple(np.shape(level0(l.data)))}" for l in layers)
        raise ImageError(f"The chosen image layers have different shapes ({detail}); choose layers of one field.")
    shape = shapes.pop()
    if len(shape) not in (2, 3):
        raise ImageError(
            f"Layer {first.name} has shape {shape}: tick one multi-channel 4D layer, or several 2D/3D layers."
        )
    scales = {spatial_scale(l) for l in layers}
    if len(scales) != 1:
        raise ImageError("The chosen image layers have different scales (voxel sizes); choose layers of one field.")
    data = np.stack([np.asarray(level0(l.data)) for l in layers])
    if data.ndim == 3:
        data = data[:, None]
    return make_image(data, "CZYX", names, spatial_scale(first), source=", ".join(l.name for l in layers))


def labels_volume(layer) -> np.ndarray:
    """The label image as ``ZYX`` (a view when possible)."""
    data = np.asarray(level0(layer.data))
    return data[np.newaxis] if data.ndim == 2 else data


def world_position(layer, zyx: Sequence[float]) -> np.ndarray:
    """World coordinates (z, y, x) of a voxel position of ``layer`` (scale and translate applied)."""
    return np.asarray(zyx, float) * np.asarray(spatial_scale(layer)) + np.asarray(spatial_translate(layer))


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


#: A selected cell's surroundings (``CELL_VIEW_DIAMETERS`` cell diameters) fill this share of the canvas
CELL_VIEW_SHARE = 0.5
CELL_VIEW_DIAMETERS = 4.0


def cell_diameter(volume_voxels: float, ndim: int = 3) -> float:
    """The diameter (voxels) of a sphere (disc, in 2D) of ``volume_voxels``."""
    volume = max(float(volume_voxels), 1.0)
    return float((6 * volume / np.pi) ** (1 / 3) if ndim == 3 else 2 * np.sqrt(volume / np.pi))


def zoom_to_cell(viewer, layer, diameter_voxels: float) -> None:
    """Zoom in (never out) so that :data:`CELL_VIEW_DIAMETERS` cell diameters fill
    :data:`CELL_VIEW_SHARE` of the canvas's smaller side: a cell selected while the whole field is in view
    becomes big enough to see (a ~20 px cell at the reset zoom of a 1080 × 1080 field)."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)  # (height, width) in screen pixels
    cam = camera(viewer)
    if size is None or min(size) <= 0:
        return
    world = CELL_VIEW_DIAMETERS * max(float(diameter_voxels), 1.0) * float(max(spatial_scale(layer)[-2:]))
    wanted = CELL_VIEW_SHARE * float(min(size)) / world
    if float(cam.zoom) < wanted:
        cam.zoom = wanted


def focus_on(viewer, layer, zyx: Sequence[float], center: bool = True, diameter: float | None = None) -> None:
    """Move the sliders to ``zyx`` (layer voxels) and centre the camera on it; with ``diameter`` (the cell's,
    in voxels) also zoom in on it (:func:`zoom_to_cell`)."""
    if center and diameter is not None:
        zoom_to_cell(viewer, layer, diameter)
    world = world_position(layer, zyx)
    nd = viewer.dims.ndim
    coords = list(world[-min(nd, 3):]) if layer.ndim >= 3 else list(world[1:])
    offset = nd - len(coords)
    displayed = list(viewer.dims.displayed)
    for i, value in enumerate(coords):
        axis = offset + i
        if axis not in displayed:
            viewer.dims.set_point(axis, float(value))
    if center:
        wanted = [float(coords[a - offset]) for a in displayed if a >= offset]
        camera(viewer).center = tuple(_keep_field_in_view(viewer, layer, displayed[-len(wanted):], wanted))


def _keep_field_in_view(viewer, layer, axes, wanted):
    """Clamp a camera centre so a border cell does not shove the field into a corner of the canvas."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)  # (height, width) in screen pixels
    zoom = float(getattr(camera(viewer), "zoom", 0) or 0)
    if size is None or zoom <= 0 or len(wanted) != 2:
        return wanted
    extent = np.asarray(layer.extent.world)  # (2, ndim): low and high corners
    out = []
    for axis, value, pixels in zip(axes, wanted, size):
        lo, hi = float(extent[0][axis]), float(extent[1][axis])
        half = 0.5 * float(pixels) / zoom
        out.append((lo + hi) / 2 if hi - lo <= 2 * half else min(max(value, lo + half), hi - half))
    return out


def find_role(viewer, role: str, owner: str | None = None):
    for layer in viewer.layers:
        if layer.metadata.get(ROLE) == role and (owner is None or layer.metadata.get("gradcamo_owner") == owner):
            return layer
    return None


def upsert_image(viewer, role: str, data: np.ndarray, *, name: str, scale, translate, contrast_limits,
                 colormap: str = "inferno", blending: str = "additive", owner: str | None = None,
                 metadata: dict | None = None, keep_active=None, below=None, opacity: float = 1.0,
                 visible: bool = True):
    """Create (or update in place) this plugin's image layer for ``role``; returns the layer."""
    meta = {ROLE: role, "gradcamo_owner": owner, **(metadata or {})}
    layer = find_role(viewer, role, owner)
    lo, hi = (float(v) for v in contrast_limits)
    if not hi > lo:
        hi = lo + 1e-6
    if layer is None:
        layer = viewer.add_image(data, name=name, scale=scale, translate=translate, colormap=colormap,
                                 blending=blending, contrast_limits=(lo, hi), metadata=meta, opacity=opacity,
                                 visible=visible)
        if below is not None and below in viewer.layers:
            # keep the masks drawn over the maps: the map goes just under the labels layer
            viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(below))
    else:
        layer.data = data
        layer.scale = scale
        layer.translate = translate
        layer.metadata.update(meta)
        layer.contrast_limits_range = (lo, hi)
        layer.contrast_limits = (lo, hi)
        layer.visible = visible
    if keep_active is not None and keep_active in viewer.layers:
        viewer.layers.selection.active = keep_active
    return layer


def set_label_colors(layer, color_dict: dict) -> None:
    """Recolour a Labels layer with a ``DirectLabelColormap`` (``None`` key = labels without a row)."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict=color_dict)
