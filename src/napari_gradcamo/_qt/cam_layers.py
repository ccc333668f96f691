"""The audit's own layers in the viewer: the selected cell's Grad-CAM, its outline, and the all-cells map."""

from __future__ import annotations

import numpy as np

from napari_gradcamo._qt import layers as L
from napari_gradcamo.audit import labels_features

OUTLINE_COLOR = (1.0, 1.0, 1.0, 1.0)


class CamLayers:
    """Create, update and hide the layers one audit dock owns (found again by their metadata role)."""

    def __init__(self, viewer, owner: str):
        self.viewer = viewer
        self.owner = owner

    def cell_layer(self):
        return L.find_role(self.viewer, L.ROLE_CELL_CAM, self.owner)

    def all_layer(self):
        return L.find_role(self.viewer, L.ROLE_ALL_CAM, self.owner)

    def outline_layer(self):
        return L.find_role(self.viewer, L.ROLE_OUTLINE, self.owner)

    def hide(self, *, cell: bool = True, all_cells: bool = True) -> None:
        for wanted, found in ((cell, self.cell_layer()), (cell, self.outline_layer()), (all_cells, self.all_layer())):
            if wanted and found is not None:
                found.visible = False

    def show_all(self, labels_layer, composite: np.ndarray, visible: bool = True) -> None:
        """Show the all-cells map (``visible``); refresh in place when it is already the layer's data."""
        data = composite[0] if labels_layer.ndim == 2 else composite
        existing = self.all_layer()
        if existing is not None and _same_array(existing.data, data):
            if existing.visible != visible:
                existing.visible = visible  # napari slices and redraws a layer it shows again
            elif visible:
                existing.refresh()
            return
        L.upsert_image(
            self.viewer, L.ROLE_ALL_CAM, data, name=L.ALL_CAM_NAME, scale=list(labels_layer.scale),
            translate=list(labels_layer.translate), contrast_limits=(0.0, 1.0), colormap="magma",
            owner=self.owner, keep_active=labels_layer, below=labels_layer, opacity=0.6, visible=visible,
        )

    def show_cell(self, labels_layer, cam, label: int) -> None:
        """The cell's Grad-CAM on its crop, placed where the crop sits in the image, and its outline."""
        data = labels_features.cam_volume(cam)
        origin = tuple(cam.origin)
        scale = L.spatial_scale(labels_layer)
        translate = labels_features.crop_world_translate(origin, scale, L.spatial_translate(labels_layer))
        mask = crop_mask(L.labels_volume(labels_layer), origin, data.shape, label)
        if labels_layer.ndim == 2:
            data, mask, scale, translate = data[0], mask[0], scale[1:], translate[1:]
        L.upsert_image(
            self.viewer, L.ROLE_CELL_CAM, data, name=L.CELL_CAM_NAME, scale=list(scale), translate=list(translate),
            contrast_limits=(float(data.min()), float(data.max())), colormap="inferno", owner=self.owner,
            metadata={"label": label, "crop_origin": origin}, keep_active=labels_layer, below=labels_layer,
        )
        self.show_outline(labels_layer, mask, scale, translate, label)

    def show_outline(self, labels_layer, mask: np.ndarray, scale, translate, label: int) -> None:
        """A white contour around the selected cell, drawn over the masks."""
        from napari.utils.colormaps import DirectLabelColormap

        colormap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: OUTLINE_COLOR})
        layer = self.outline_layer()
        meta = {L.ROLE: L.ROLE_OUTLINE, "gradcamo_owner": self.owner, "label": label}
        data = mask.astype(np.asarray(L.level0(labels_layer.data)).dtype)  # same dtype: no new colour kernel
        if layer is None:
            layer = self.viewer.add_labels(data, name=L.OUTLINE_NAME, scale=list(scale), translate=list(translate),
                                           metadata=meta, opacity=1.0)
            layer.contour = 2
            layer.editable = False
        else:
            layer.data = data
            layer.scale, layer.translate = list(scale), list(translate)
            layer.metadata.update(meta)
            layer.visible = True
        layer.colormap = colormap
        if labels_layer in self.viewer.layers:
            self.viewer.layers.selection.active = labels_layer


def _same_array(a, b) -> bool:
    """``a`` is ``b``, or a view of the same memory with the same shape (``composite[0]`` is a new view each time)."""
    return a is b or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def crop_mask(labels: np.ndarray, origin, shape, label: int) -> np.ndarray:
    """``labels == label`` on the crop grid at ``origin`` (zero outside the image)."""
    out = np.zeros(tuple(shape), dtype=bool)
    src, dst = [], []
    for o, s, n in zip(origin, shape, labels.shape):
        start, stop = max(int(o), 0), min(int(o) + int(s), n)
        if stop <= start:
            return out
        src.append(slice(start, stop))
        dst.append(slice(start - int(o), stop - int(o)))
    out[tuple(dst)] = labels[tuple(src)] == label
    return out
