"""'Virtual stain': predict the five Cell Painting stains from a brightfield layer with a trained model.

The predicted stains appear as ordinary image layers (one per stain, named "<stain> (virtual)", with the
stain in ``metadata['gradcamo_channel']``), so they can be segmented and audited like real stains.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt._compat import avoid_llvm_clash
from napari_gradcamo._qt.panel import JobPanel, PanelJobs
from napari_gradcamo._qt.pickers import guarded
from napari_gradcamo.progress import Cancelled

NO_LABEL = "— no label —"
COLORMAPS = {"DNA": "blue", "ER": "green", "RNA": "cyan", "AGP": "red", "Mito": "magenta"}
SUFFIX = " (virtual)"


class VirtualStainDock(PanelJobs, QWidget):
    """Pick a brightfield layer, a model file and a class; Predict adds one layer per stain."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.model = None
        self.output_layers: list = []
        self._source = None

        self.layer = QComboBox(self)
        self.layer.setToolTip("Brightfield image layer: (planes, y, x) or (y, x), as the model was trained.")
        self.path = QLineEdit(self)
        self.path.setPlaceholderText("virtual-stain model (.safetensors)")
        self.browse = QPushButton("Browse…", self)
        self.load_button = QPushButton("Load", self)
        self.info = QLabel("No model loaded.", self)
        self.info.setWordWrap(True)
        self.klass = QComboBox(self)
        self.klass.setToolTip("Class label for the AdaGN embedding and classifier guidance (the perturbation).")
        self.guidance = QDoubleSpinBox(self)
        self.guidance.setRange(0.0, 1000.0)
        self.guidance.setValue(0.0)
        self.guidance.setToolTip("Classifier guidance scale s (0: none; needs a class and a guidance classifier).")
        self.steps = QSpinBox(self)
        self.steps.setRange(1, 2000)
        self.steps.setValue(20)
        self.sampler = QComboBox(self)
        self.sampler.addItems(["ddim", "ddpm"])
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2**31 - 1)
        self.run_button = QPushButton("Predict stains", self)
        self.panel = JobPanel(self)

        model_row = QHBoxLayout()
        model_row.addWidget(self.path, 1)
        model_row.addWidget(self.browse)
        model_row.addWidget(self.load_button)
        form = QFormLayout()
        form.addRow("Brightfield", self.layer)
        form.addRow("Model", model_row)
        form.addRow("", self.info)
        form.addRow("Class", self.klass)
        form.addRow("Guidance s", self.guidance)
        form.addRow("Steps", self.steps)
        form.addRow("Sampler", self.sampler)
        form.addRow("Seed", self.seed)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.panel)
        layout.addStretch(1)

        self.browse.clicked.connect(self._browse)
        self.load_button.clicked.connect(lambda: self.load_model(self.path.text().strip()))
        self.run_button.clicked.connect(self.run)
        napari_viewer.layers.events.inserted.connect(self._refresh_layers)
        napari_viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self._show_model()

    # -- inputs -------------------------------------------------------------------------------
    @guarded
    def _refresh_layers(self, event=None) -> None:
        previous = self.layer.currentText()
        self.layer.blockSignals(True)
        self.layer.clear()
        for layer in L.image_layers(self.viewer):
            if layer.ndim in (2, 3) and not layer.name.endswith(SUFFIX):
                self.layer.addItem(layer.name)
        index = self.layer.findText(previous)
        if index >= 0:
            self.layer.setCurrentIndex(index)
        self.layer.blockSignals(False)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "virtual-stain model", "", "safetensors (*.safetensors)")
        if path:
            self.path.setText(path)
            self.load_model(path)

    def load_model(self, path: str) -> bool:
        """Load a checkpoint (False, with the reason shown, when it cannot be used)."""
        from napari_gradcamo.virtual_stain.checkpoint import load_model
        from napari_gradcamo.virtual_stain.model import VirtualStainError

        try:
            self.model = load_model(path)
        except VirtualStainError as error:
            self.model = None
            self._show_model()
            self.panel.say(str(error), error=True)
            return False
        self.path.setText(str(path))
        self._show_model()
        self.panel.say("")
        return True

    def _show_model(self) -> None:
        self.klass.clear()
        self.klass.addItem(NO_LABEL, None)
        m = self.model
        if m is None:
            self.info.setText("No model loaded.")
            self.guidance.setEnabled(False)
            return
        for i, name in enumerate(m.class_names):
            self.klass.addItem(name, i)
        self.guidance.setEnabled(m.classifier is not None)
        kind = "AdaGN class embedding" if m.labelled else "unlabelled (Palette)"
        guide = "guidance classifier" if m.classifier is not None else "no guidance classifier"
        self.info.setText(f"{kind}, {guide}; {m.unet_config.condition_channels} brightfield plane(s) "
                          f"{m.defocus_um} µm → {', '.join(m.stain_names)}")

    def brightfield(self) -> np.ndarray:
        from napari_gradcamo.virtual_stain.model import VirtualStainError

        name = self.layer.currentText()
        if not name or name not in self.viewer.layers:
            raise VirtualStainError("pick a brightfield image layer.")
        self._source = self.viewer.layers[name]
        return np.asarray(L.level0(self._source.data), dtype=np.float32)

    # -- run ----------------------------------------------------------------------------------
    def run(self) -> bool:
        """Start sampling; False (with the reason shown) when it cannot start."""
        from napari_gradcamo.virtual_stain.model import VirtualStainError

        if self.job is not None and self.job.running:
            self.panel.say("Prediction is already running; Cancel it first.", error=True)
            return False
        if self.model is None and self.path.text().strip() and not self.load_model(self.path.text().strip()):
            return False
        try:
            if self.model is None:
                raise VirtualStainError("load a virtual-stain model first (Browse…).")
            image = self.brightfield()
            klass = self.klass.currentData()
            scale = float(self.guidance.value()) if self.guidance.isEnabled() else 0.0
            if scale and klass is None:
                raise VirtualStainError("classifier guidance needs a class: pick one or set s to 0.")
        except VirtualStainError as error:
            self.panel.say(str(error), error=True)
            return False
        kwargs = dict(klass=klass, guidance_scale=scale, sampler=self.sampler.currentText(),
                      steps=int(self.steps.value()), seed=int(self.seed.value()))
        self.run_button.setEnabled(False)
        self.panel.start(f"Sampling {kwargs['steps']} {kwargs['sampler'].upper()} steps on "
                         f"{'×'.join(map(str, image.shape))}…", _predict_job, self.model, image, kwargs,
                         on_return=self._on_done, on_error=self._on_error, on_finished=self._on_finished)
        return True

    @guarded
    def _on_done(self, stains) -> None:
        if stains is None:
            return
        source = self._source
        scale = list(source.scale)[-2:] if source is not None else [1.0, 1.0]
        translate = list(source.translate)[-2:] if source is not None else [0.0, 0.0]
        layers = []
        for name, channel in zip(self.model.stain_names, stains):
            title = f"{name}{SUFFIX}"
            low, high = np.percentile(channel, (0.5, 99.8))
            limits = (float(low), float(max(high, low + 1e-3)))
            if title in self.viewer.layers:
                layer = self.viewer.layers[title]
                layer.data = channel
                layer.contrast_limits = limits
            else:
                layer = self.viewer.add_image(channel, name=title, scale=scale, translate=translate,
                                              colormap=COLORMAPS.get(name, "gray"), blending="additive",
                                              contrast_limits=limits, metadata={L.CHANNEL: name})
            layers.append(layer)
        self.output_layers = layers
        self.panel.end(f"{len(layers)} virtual stain layers in {self.panel.elapsed:.1f} s.")

    @guarded
    def _on_error(self, error) -> None:
        if isinstance(error, Cancelled):
            self.panel.end("Prediction cancelled; no layer was changed.")
            return
        self.panel.end(f"Prediction failed: {error}", error=True)

    @guarded
    def _on_finished(self) -> None:
        self.run_button.setEnabled(True)
        self.panel.cancel_button.setEnabled(False)


def _predict_job(model, brightfield, kwargs, cancel):
    """Worker body: the prediction's steps; returns ``(C, Y, X)`` in camera units."""
    return (yield from model.iter_predict_image(brightfield, cancel=cancel, **kwargs))
