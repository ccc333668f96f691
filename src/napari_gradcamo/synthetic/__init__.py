"""Synthetic 3D Cell Painting fields with known ground truth, and the honest/shortcut experiment."""
