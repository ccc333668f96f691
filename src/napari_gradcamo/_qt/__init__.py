"""Qt side of the napari plugin: dock widgets, the live results table and layer helpers.

Everything that computes lives in the Qt-free core (``napari_gradcamo.audit.run``, ``audit.labels_features``,
``output.export``, ``segment.cellpose``); these modules only wire napari layers, ``labels.features`` and it.
Importing this package loads nothing: ``AuditWidget`` and ``SegmentWidget`` are imported when first asked for.
"""

from importlib import import_module

_LAZY = {
    "AuditWidget": "napari_gradcamo._qt.audit_widget",
    "SegmentWidget": "napari_gradcamo._qt.segment_widget",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
