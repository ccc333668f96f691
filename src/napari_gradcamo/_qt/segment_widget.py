"""'Segment cells': cellpose on the chosen image layers, in a worker thread, into a Labels layer."""

from __future__ import annotations

import re

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_gradcamo._qt import layers as L
from napari_gradcamo._qt._compat import avoid_llvm_clash
from napari_gradcamo._qt.panel import JobPanel, PanelJobs
from napari_gradcamo._qt.pickers import ImageLayersPicker, guarded
from napari_gradcamo.progress import Cancelled
from napari_gradcamo.segment.cellpose import GENERALIST_MODEL, SegmentationSettings, iter_segment

_DEFAULTS = SegmentationSettings()

NONE = "— none —"
INVALID_STYLE = "border: 2px solid #e0443e;"
NUCLEUS_HINTS = ("dna", "dapi", "hoechst", "nuc", "h2b")
CYTO_HINTS = ("agp", "actin", "membrane", "cyto", "phalloidin", "wga", "er", "rna")
OUTPUT_NAME = "Cells (cellpose)"


def _guess(names, hints) -> int | None:
    lower = [n.lower() for n in names]
    for hint in hints:
        for i, n in enumerate(lower):
            if n == hint or n.startswith(hint):
                return i
    return None


class SegmentWidget(PanelJobs, QWidget):
    """Segment cells with cellpose (stitched 2D per slice, or 3D); the result is a Labels layer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        avoid_llvm_clash()
        from napari_gradcamo.segment.cellpose import GENERALIST_MODEL, available_models

        self.viewer = napari_viewer
        self.output_layer = None
        self._source_layers: list = []
        self._stopped = ""

        self.picker = ImageLayersPicker(napari_viewer, self)
        self.nucleus = QComboBox(self)
        self.nucleus.setToolTip("The nuclear stain (second cellpose channel for cytoplasm models).")
        self.cyto = QComboBox(self)
        self.cyto.setToolTip("The stain that outlines whole cells (first cellpose channel).")
        self.model = QComboBox(self)
        self.model.setEditable(True)
        self.model.addItems(available_models())  # those of the installed cellpose (3 or 4)
        self.model.setCurrentText(_DEFAULTS.model)  # the engine's and the CLI's default (SegmentationSettings)
        self.model.setToolTip(
            f"A cellpose model name, or a model file (Browse…). '{GENERALIST_MODEL}' is MouseLand's generalist\n"
            "network fetched once from the package index (works where the cellpose website cannot be reached)."
        )
        self.browse = QPushButton("Browse…", self)
        self.diameter = QDoubleSpinBox(self)
        self.diameter.setRange(0.0, 1000.0)
        self.diameter.setDecimals(1)
        self.diameter.setValue(_DEFAULTS.diameter or 0.0)
        self.diameter.setSpecialValueText("model default")
        self.diameter.setSuffix(" px")
        self.diameter.setToolTip("Typical cell diameter in pixels (0 = the model's own).")
        self.mode = QComboBox(self)
        self.mode.addItem("stitched 2D (per slice)", "stitch2d")
        self.mode.addItem("3D", "3d")
        self.mode.setToolTip("Stitched 2D is the paper's mode and far faster on a CPU.")
        self.stitch = QDoubleSpinBox(self)
        self.stitch.setRange(0.0, 1.0)
        self.stitch.setSingleStep(0.05)
        self.stitch.setValue(_DEFAULTS.stitch_threshold)
        self.stitch.setToolTip("IoU needed to join masks on neighbouring slices (stitched 2D).")
        self.anisotropy = QDoubleSpinBox(self)
        self.anisotropy.setRange(0.0, 100.0)
        self.anisotropy.setDecimals(3)
        self.anisotropy.setValue(1.0)
        self.anisotropy.setToolTip("z step / xy pixel size, taken from the layer scale (3D mode).")
        self.min_size = QSpinBox(self)
        self.min_size.setRange(-1, 1_000_000)
        self.min_size.setValue(_DEFAULTS.min_size)
        self.min_size.setToolTip("Masks smaller than this many voxels are removed (-1 keeps all).")
        self.run_button = QPushButton("Segment", self)
        self.panel = JobPanel(self)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(self.browse)
        form = QFormLayout()
        form.addRow("Nucleus channel", self.nucleus)
        form.addRow("Cytoplasm channel", self.cyto)
        form.addRow("Model", model_row)
        form.addRow("Diameter", self.diameter)
        form.addRow("Mode", self.mode)
        form.addRow("Stitch threshold", self.stitch)
        form.addRow("Anisotropy", self.anisotropy)
        form.addRow("Min size", self.min_size)
        source = QGroupBox("Image (tick one layer per stain)", self)
        QVBoxLayout(source).addWidget(self.picker)
        settings = QGroupBox("cellpose", self)
        settings.setLayout(form)
        layout = QVBoxLayout(self)
        layout.addWidget(source)
        layout.addWidget(settings)
        layout.addWidget(self.run_button)
        layout.addWidget(self.panel)
        layout.addStretch(1)
        self._fields = {
            "nucleus_channel": self.nucleus,
            "cyto_channel": self.cyto,
            "model": self.model,
            "diameter": self.diameter,
            "stitch_threshold": self.stitch,
            "anisotropy": self.anisotropy,
            "min_size": self.min_size,
            "mode": self.mode,
        }

        self.picker.changed.connect(self._on_source_changed)
        self.browse.clicked.connect(self._browse)
        self.run_button.clicked.connect(self.run)
        self.mode.currentIndexChanged.connect(self._on_mode)
        for widget in self._fields.values():
            signal = getattr(widget, "currentIndexChanged", None) or getattr(widget, "valueChanged", None)
            if signal is not None:
                signal.connect(self._clear_marks)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self._on_source_changed()
        self._on_mode()

    # -- parameters ---------------------------------------------------------------------------
    @guarded
    def _on_source_changed(self) -> None:
        names = self.picker.channel_names()
        for combo, hints in ((self.nucleus, NUCLEUS_HINTS), (self.cyto, CYTO_HINTS)):
            previous = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(NONE, None)
            for i, name in enumerate(names):
                combo.addItem(f"{i}: {name}", i)
            keep = combo.findText(previous)
            if keep > 0:
                combo.setCurrentIndex(keep)
            else:
                guess = _guess(names, hints)
                if combo is self.cyto and guess is not None and guess == self.nucleus.currentData():
                    guess = None
                combo.setCurrentIndex(0 if guess is None else guess + 1)
            combo.blockSignals(False)
        chosen = self.picker.layers()
        if chosen:
            z, y, x = L.spatial_scale(chosen[0]) if L.channel_axis_of(chosen[0]) is None else (
                [float(chosen[0].scale[a]) for a in range(4) if a != L.channel_axis_of(chosen[0])]
            )
            self.anisotropy.setValue(float(z) / float(x) if x else 1.0)
        self._clear_marks()

    def _on_mode(self) -> None:
        stitched = self.mode.currentData() == "stitch2d"
        self.stitch.setEnabled(stitched)
        self.anisotropy.setEnabled(not stitched)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "cellpose model file", "", "All files (*)")
        if path:
            self.model.setEditText(path)

    def settings(self):
        from napari_gradcamo.segment.cellpose import SegmentationSettings

        diameter = float(self.diameter.value())
        return SegmentationSettings(
            model=self.model.currentText().strip(),
            nucleus_channel=self.nucleus.currentData(),
            cyto_channel=self.cyto.currentData(),
            diameter=diameter if diameter > 0 else None,
            mode=self.mode.currentData(),
            stitch_threshold=float(self.stitch.value()),
            anisotropy=float(self.anisotropy.value()),
            min_size=int(self.min_size.value()),
        )

    def _clear_marks(self, *args) -> None:
        for widget in self._fields.values():
            widget.setStyleSheet("")

    def _mark(self, message: str) -> None:
        message = gui_message(message)
        self._clear_marks()
        hit = False
        for name, widget in self._fields.items():
            if re.search(rf"\b{re.escape(name)}\b", message):
                widget.setStyleSheet(INVALID_STYLE)
                hit = True
        if not hit and ("channel" in message):
            self.nucleus.setStyleSheet(INVALID_STYLE)
            self.cyto.setStyleSheet(INVALID_STYLE)
        self.panel.say(message, error=True)

    def invalid_fields(self) -> list[str]:
        return [name for name, widget in self._fields.items() if widget.styleSheet() == INVALID_STYLE]

    # -- run ----------------------------------------------------------------------------------
    def run(self) -> bool:
        """Validate and start cellpose; returns False (with the reason shown) when it cannot start."""
        from napari_gradcamo.io.images import ImageError
        from napari_gradcamo.segment.cellpose import SegmentationError, validate_settings

        if self.job is not None and self.job.running:
            self.panel.say("Segmentation is already running; Cancel it first.", error=True)
            return False
        try:
            image = self.picker.image()
            settings = self.settings()
            if self.stitch.value() <= 0 and settings.mode == "stitch2d":
                raise SegmentationError("stitch_threshold must be above 0 to join masks across slices.")
            validate_settings(image, settings)
        except (ImageError, SegmentationError, ValueError) as error:
            self._mark(str(error))
            return False
        self._clear_marks()
        self._stopped = ""
        self._source_layers = self.picker.layers()
        self.run_button.setEnabled(False)
        self._image_shape = image.spatial_shape
        self.panel.start(f"cellpose ({settings.model}) on {'×'.join(map(str, image.spatial_shape))} voxels…",
                         iter_segment, image, settings, on_return=self._on_done, on_error=self._on_error,
                         on_finished=self._on_finished)
        return True

    @guarded
    def _on_done(self, labels) -> None:
        if labels is None or self._stopped:
            return
        source = [l for l in self._source_layers if l in self.viewer.layers]
        reference = source[0] if source else None
        labels = np.asarray(labels)
        if reference is not None and reference.ndim == 2 and labels.ndim == 3 and labels.shape[0] == 1:
            labels = labels[0]
        if reference is not None and L.channel_axis_of(reference) is None:
            scale, translate = list(reference.scale)[-labels.ndim:], list(reference.translate)[-labels.ndim:]
        elif reference is not None:
            axis = L.channel_axis_of(reference)
            scale = [float(reference.scale[a]) for a in range(4) if a != axis][-labels.ndim:]
            translate = [float(reference.translate[a]) for a in range(4) if a != axis][-labels.ndim:]
        else:
            scale, translate = [1.0] * labels.ndim, [0.0] * labels.ndim
        n = int(labels.max())
        if self.output_layer is not None and self.output_layer in self.viewer.layers:
            self.output_layer.data = labels
            self.output_layer.scale = scale
            self.output_layer.translate = translate
            verb = "updated"
        else:
            self.output_layer = self.viewer.add_labels(
                labels, name=OUTPUT_NAME, scale=scale, translate=translate,
                metadata={L.ROLE: L.ROLE_SEGMENTATION},
            )
            verb = "added"
        self.panel.end(f"{n} cells found in {self.panel.elapsed:.1f} s; layer '{self.output_layer.name}' {verb}.")

    @guarded
    def _on_error(self, error) -> None:
        if isinstance(error, Cancelled):
            self.panel.end(self._stopped or "Segmentation cancelled; no layer was changed.", error=bool(self._stopped))
            return
        self.panel.end(f"Segmentation failed: {gui_message(str(error))}", error=True)
        self._mark(str(error))

    @guarded
    def _on_finished(self) -> None:
        self.run_button.setEnabled(True)
        self.panel.cancel_button.setEnabled(False)

    @guarded
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.output_layer:
            self.output_layer = None
        if self.job is not None and self.job.running and layer in self._source_layers:
            self._stopped = f"Layer '{layer.name}' was deleted while cellpose ran on it: segmentation stopped, no layer was changed."
            self.cancel()
            self.panel.say(self._stopped, error=True)


#: the core's advice for offline use names a Python function and CLI flags; a GUI user chooses in the dock
_CORE_OFFLINE_HINT = "Pass a cellpose-3 model file path as the model instead"
GUI_OFFLINE_HINT = (f"Choose '{GENERALIST_MODEL}' in the Model box (weights that need no download), "
                    "or Browse… to a cellpose-3 model file.")


def gui_message(message: str, limit: int = 400) -> str:
    """A core error for the dock: terminal colour codes removed, the offline advice said in GUI words,
    a long embedded exception cut short."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", message)
    hint = ""
    if _CORE_OFFLINE_HINT in text:
        text, hint = text.split(_CORE_OFFLINE_HINT, 1)[0].rstrip(), " " + GUI_OFFLINE_HINT
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text + hint
