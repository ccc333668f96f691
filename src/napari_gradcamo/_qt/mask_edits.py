"""Watch a Labels layer for mask edits (paint, fill, erase, undo, redo, a replaced label image).

napari emits ``labels.events.paint`` for paint/fill/erase (as it records the undo step, which for a
single call is *before* the pixels are written: the watcher reads the masks once the event loop is
back). napari 0.9 emits no event for ``undo()``/``redo()`` (``Labels._load_history`` only calls
``refresh()``), and ``events.set_data``/``labels_update`` do not say which labels changed. So the
watcher wraps the layer's ``undo``/``redo`` and reads the step they replayed from the layer's history
lists. That is the only place this plugin touches napari internals; if those lists disappear the
wrap is skipped and 'Re-check masks' still brings the table up to date.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QObject, QTimer, Signal

from napari_gradcamo._qt.pickers import guarded
from napari_gradcamo.audit import labels_features

_WRAPPED = "_gradcamo_history_wrapped"


class MaskEditWatcher(QObject):
    """Emits ``edited(layer, labels)`` after edits of a watched layer and ``replaced(layer)`` when its data is set."""

    edited = Signal(object, object)  # layer, set of label ids
    replaced = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.layer = None
        self._queued: set[int] = set()
        self._scheduled = False

    def watch(self, layer) -> None:
        """Follow ``layer`` (None: follow nothing); the previous layer is let go."""
        if self.layer is not None:
            for emitter, handler in ((self.layer.events.paint, self._on_paint),
                                     (self.layer.events.data, self._on_data)):
                try:
                    emitter.disconnect(handler)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self.layer = layer
        self._queued.clear()
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_data)
            _wrap_history(layer, self)

    @guarded
    def _on_paint(self, event) -> None:
        self._queued.update(labels_features.labels_in_edit(event.value))
        if not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._flush)

    @guarded
    def _flush(self) -> None:
        self._scheduled = False
        touched, self._queued = set(self._queued), set()
        if touched and self.layer is not None:
            self.edited.emit(self.layer, touched)

    @guarded
    def _on_data(self, event=None) -> None:
        if self.layer is not None:
            self.replaced.emit(self.layer)

    def replayed(self, layer, atoms) -> None:
        """Called by the wrapped undo/redo with the history step it just replayed."""
        if layer is self.layer:
            self.edited.emit(layer, labels_features.labels_in_edit(atoms))


def _wrap_history(layer, watcher: MaskEditWatcher) -> None:
    """Make ``layer.undo``/``layer.redo`` report the labels they changed to the watcher (once per layer)."""
    if getattr(layer, _WRAPPED, None) is not None:
        setattr(layer, _WRAPPED, weakref.ref(watcher))
        return
    if not all(hasattr(layer, name) for name in ("_undo_history", "_redo_history")):
        return

    def wrap(name: str, replayed_stack: str) -> None:
        original = getattr(layer, name)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            ref = getattr(layer, _WRAPPED, None)
            target = ref() if ref is not None else None
            stack = getattr(layer, replayed_stack, None)
            if target is not None and stack:
                try:
                    target.replayed(layer, stack[-1])
                except RuntimeError:  # the widget was deleted
                    pass
            return result

        setattr(layer, name, wrapped)

    wrap("undo", "_redo_history")
    wrap("redo", "_undo_history")
    setattr(layer, _WRAPPED, weakref.ref(watcher))
