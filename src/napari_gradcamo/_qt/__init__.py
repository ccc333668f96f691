"""Qt side of the napari plugin: dock widgets, the live results table and layer helpers.

Everything that computes lives in the Qt-free core (``napari_gradcamo.audit``, ``features``,
``export``, ``segmentation``); these modules only wire napari layers, ``labels.features`` and it.
"""

from .audit_widget import AuditWidget
from .segment_widget import SegmentWidget

__all__ = ["AuditWidget", "SegmentWidget"]
