"""A lab's own single-cell classifiers, as a third party would ship them (napari-gradcamo test package)."""
