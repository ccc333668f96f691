"""napari-gradcamo: audit where a single-cell classifier looks (Grad-CAM and Grad-CAMO)."""

__version__ = "0.1.0"
