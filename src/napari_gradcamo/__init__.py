"""napari-gradcamo: audit where a single-cell classifier looks (Grad-CAM and Grad-CAMO).

The names in ``__all__`` are the scripting entry points; each is imported on first use, so
``import napari_gradcamo`` stays fast and loads neither Qt nor torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-gradcamo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "read_image": "napari_gradcamo.io.images",
    "read_labels": "napari_gradcamo.io.images",
    "Image": "napari_gradcamo.io.images",
    "ImageError": "napari_gradcamo.io.images",
    "load_checkpoint": "napari_gradcamo.models.checkpoint",
    "save_checkpoint": "napari_gradcamo.models.checkpoint",
    "CheckpointError": "napari_gradcamo.models.metadata",
    "ModelMetadata": "napari_gradcamo.models.metadata",
    "segment": "napari_gradcamo.segment.cellpose",
    "SegmentationSettings": "napari_gradcamo.segment.cellpose",
    "AuditSettings": "napari_gradcamo.audit.run",
    "run_audit": "napari_gradcamo.audit.run",
    "iter_audit": "napari_gradcamo.audit.run",
    "score_cam": "napari_gradcamo.audit.scoring",
    "judge": "napari_gradcamo.audit.verdict",
    "judge_fields": "napari_gradcamo.audit.verdict",
    "VerdictReport": "napari_gradcamo.audit.verdict",
    "write_table": "napari_gradcamo.output.results",
    "export_flagged": "napari_gradcamo.output.export",
    "CancelToken": "napari_gradcamo.progress",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_gradcamo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
