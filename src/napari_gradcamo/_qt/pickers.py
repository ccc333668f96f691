"""Layer pickers that follow the viewer's layer list: image channels (checkable) and a labels layer."""

from __future__ import annotations

import functools

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from napari_gradcamo._qt import layers as L


def guarded(method):
    """Ignore viewer events that arrive after the Qt side of a widget was deleted."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as error:
            if "deleted" in str(error):
                return None
            raise

    return wrapper


class FollowsLayers:
    """A picker that refreshes itself whenever the viewer's layer list changes."""

    def follow_layers(self, viewer, moved: bool = False) -> None:
        events = viewer.layers.events
        for event in (events.inserted, events.removed, *((events.moved,) if moved else ())):
            event.connect(self._on_layers_changed)

    def follow_names(self, layers) -> None:
        """Refresh when a layer new to this picker is renamed."""
        for layer in layers:
            if layer not in self._layers:
                try:
                    layer.events.name.connect(self._on_layers_changed)
                except (AttributeError, TypeError):
                    pass

    @guarded
    def _on_layers_changed(self, event=None) -> None:
        self.refresh()


class ImageLayersPicker(FollowsLayers, QWidget):
    """Tick the image layers that hold the stains: several 2D/3D layers, or one 4D multi-channel layer."""

    changed = Signal()

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.list = QListWidget(self)
        self.list.setToolTip(
            "Tick the layers that hold the stains (one per channel), or one multi-channel 4D layer.\n"
            "Channel names come from the layer names (or their metadata 'gradcamo_channel')."
        )
        self.list.setMaximumHeight(110)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        self._checked: dict[int, bool] = {}  # id(layer) -> ticked
        self._layers: list = []
        self._refreshing = False
        self.list.itemChanged.connect(self._on_item_changed)
        self.follow_layers(viewer, moved=True)
        self.refresh()

    def _default_ticks(self, layers) -> None:
        """Tick a sensible default: the first layer and every single-channel layer of its shape."""
        if not layers:
            return
        ticked = [l for l in layers if self._checked.get(id(l))]
        reference = ticked[0] if ticked else layers[0]
        multi = L.channel_axis_of(reference) is not None
        shape = np.shape(L.level0(reference.data))

        def fits(layer) -> bool:
            return (not multi) and L.channel_axis_of(layer) is None and np.shape(L.level0(layer.data)) == shape

        for layer in layers:
            if not ticked:
                self._checked[id(layer)] = layer is reference or fits(layer)
            elif id(layer) not in self._checked:
                self._checked[id(layer)] = fits(layer)

    def refresh(self) -> None:
        layers = L.image_layers(self.viewer)
        self.follow_names(layers)
        self._default_ticks(layers)
        alive = {id(l) for l in layers}
        self._checked = {k: v for k, v in self._checked.items() if k in alive}
        self._layers = layers
        self._refreshing = True
        try:
            self.list.clear()
            for layer in layers:
                shape = "×".join(map(str, np.shape(L.level0(layer.data))))
                item = QListWidgetItem(f"{layer.name}  ({shape})")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if self._checked.get(id(layer)) else Qt.CheckState.Unchecked)
                self.list.addItem(item)
        finally:
            self._refreshing = False
        self.changed.emit()

    def _on_item_changed(self, item) -> None:
        if self._refreshing:
            return
        row = self.list.row(item)
        if 0 <= row < len(self._layers):
            self._checked[id(self._layers[row])] = item.checkState() == Qt.CheckState.Checked
            self.changed.emit()

    def layers(self) -> list:
        return [l for l in self._layers if self._checked.get(id(l)) and l in self.viewer.layers]

    def channel_names(self) -> list[str]:
        chosen = self.layers()
        return L.channel_names_of(chosen) if chosen else []

    def image(self):
        return L.image_from_layers(self.layers())


class LabelsLayerPicker(FollowsLayers, QComboBox):
    """A combo box of the viewer's Labels layers; :meth:`layer` returns the chosen layer object."""

    layer_changed = Signal(object)

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._layers: list = []
        self._current = None
        self.setToolTip("The label image with one id per cell (e.g. from 'Segment cells').")
        self.follow_layers(viewer)
        self.currentIndexChanged.connect(self._on_index)
        self.refresh()

    def refresh(self) -> None:
        layers = L.labels_layers(self.viewer)
        self.follow_names(layers)
        current = self._current if self._current in layers else None
        if current is None and layers:
            # prefer the most recently added labels layer
            current = layers[-1]
        self._layers = layers
        self.blockSignals(True)
        try:
            self.clear()
            for layer in layers:
                self.addItem(layer.name)
            if current is not None:
                self.setCurrentIndex(layers.index(current))
        finally:
            self.blockSignals(False)
        if current is not self._current:
            self._current = current
            self.layer_changed.emit(current)

    def _on_index(self, index: int) -> None:
        layer = self._layers[index] if 0 <= index < len(self._layers) else None
        if layer is not self._current:
            self._current = layer
            self.layer_changed.emit(layer)

    def set_layer(self, layer) -> None:
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))

    def layer(self):
        return self._current if self._current in self.viewer.layers else None
