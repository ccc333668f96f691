"""``gradcamo demo``: napari with the sample field, its masks and a demo model loaded, ready to press Run."""

from __future__ import annotations

PLUGIN = "napari-gradcamo"
AUDIT_WIDGET = "Grad-CAMO audit"
DEFAULT_MODEL = "shortcut"


def build_demo(viewer, model: str | None = DEFAULT_MODEL):
    """Open the sample field in ``viewer``, dock the audit widget and load a bundled model; returns the widget.

    ``model`` is a bundled demo model name ("honest" or "shortcut") or a checkpoint path; None loads none.
    """
    from pathlib import Path

    from napari_gradcamo._sample_data import field_layers, sample_field
    from napari_gradcamo.models.bundled import bundled_models

    for data, kwargs, kind in field_layers(sample_field()):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, AUDIT_WIDGET)
    if model is not None:
        models = bundled_models()
        path = models.get(model) or (Path(model) if Path(model).is_file() else None)
        if path is None and models:
            path = next(iter(models.values()))
        if path is not None:
            widget.load_model(path)
        else:
            widget.panel.say("No demo model is bundled in this install: load a checkpoint with Open….", error=True)
    if widget.labels_layer is not None:
        widget.labels_layer.contour = 2  # outlines coloured by flag, the stains stay visible
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    return widget


def open_demo() -> int:
    """Start napari with the demo loaded and block until the window is closed."""
    import napari

    viewer = napari.Viewer(title="napari-gradcamo demo")
    widget = build_demo(viewer)
    widget.panel.say("Demo ready: press 'Run on all cells'. Click a row or a cell to see its Grad-CAM.")
    napari.run()
    return 0
