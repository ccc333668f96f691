"""Qt side of the napari plugin: dock widgets, the live results table and layer helpers.

Everything that computes lives in the Qt-free core (``napari_gradcamo.audit.run``, ``features``,
``export``, ``segmentation``); these modules only wire napari layers, ``labels.features`` and it.
"""

from napari_gradcamo._qt.audit_widget import AuditWidget
from napari_gradcamo._qt.segment_widget import SegmentWidget

__all__ = ["AuditWidget", "SegmentWidget"]
