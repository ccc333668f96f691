"""The audit dock's 'Model' box: checkpoint, image channel for each model channel, CAM method/layer/class."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from html import escape
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_gradcamo._qt.panel import first_line, notify_error
from napari_gradcamo._qt.pickers import guarded
from napari_gradcamo._qt.workers import default_synchronous
from napari_gradcamo.io.images import ImageError

UNMAPPED = "— choose —"
INVALID_STYLE = "border: 2px solid #e0443e;"
ERROR_TEXT_STYLE = "color: #ff6b6b;"
PREDICTED = "predicted class"


class ModelPanel(QGroupBox):
    """Choose a checkpoint and how to explain it; :meth:`audit_settings` turns the choices into core settings."""

    model_changed = Signal(object)  # the new ModelBundle
    loading_changed = Signal(bool)  # a checkpoint started (True) or ended (False) loading

    def __init__(self, picker, parent=None, title: str = "Model"):
        from napari_gradcamo.audit.cam import CAM_METHODS
        from napari_gradcamo.audit.run import AuditSettings

        super().__init__(title, parent)
        defaults = AuditSettings()
        self.picker = picker
        self.bundle = None
        self.source: str | None = None
        self.layer_infos: list = []
        self.loading = False  # a checkpoint is being loaded (in a worker when the user chose it)
        self.load_job = None
        self.last_load_thread = ""  # the thread that read and built the last loaded model
        self.synchronous = default_synchronous()  # load even user-chosen checkpoints inline (tests)
        self._owner_busy = False
        self._loading_name = ""
        self._loaded_ok = False
        self._inline = False  # the load in progress runs in the calling thread
        self._info_before = ("", "")  # the model box's text and style, shown again if the user does not trust
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip("Bundled demo models and checkpoints opened before.")
        self.open_button = QPushButton("Open…", self)
        self.open_button.setToolTip("Load a checkpoint (.safetensors, or a .pt state dict with a .json beside it).")
        self.model_info = QLabel("No model loaded.", self)
        self.model_info.setWordWrap(True)
        self.mapping_box = QWidget(self)
        self.mapping_form = QFormLayout(self.mapping_box)
        self.mapping_form.setContentsMargins(0, 0, 0, 0)
        self.mapping_combos: list[QComboBox] = []
        self.mapping_message = QLabel("", self)
        self.mapping_message.setWordWrap(True)
        self.method = QComboBox(self)
        self.method.addItems(list(CAM_METHODS))
        self.method.setCurrentText(defaults.method)
        self.method.setToolTip("Grad-CAM variant (those that work on 3D networks).")
        self.target_layer = QComboBox(self)
        self.target_layer.setToolTip("Layer whose activations the CAM uses (any depth, indented as a tree); the output "
                                     "shape (ch, z×y×x or y×x) is shown. Type to search.")
        self.target_layer.setEditable(True)
        self.target_layer.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.target_layer.completer().setFilterMode(Qt.MatchFlag.MatchContains)
        self.target_layer.completer().setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.target_class = QComboBox(self)
        self.target_class.setToolTip("Explain the predicted class of each cell, or one fixed class.")
        self.batch_size = QSpinBox(self)
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(int(defaults.batch_size))
        self.device = QComboBox(self)
        self.device.addItems(["auto", "cpu"])
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.open_button)
        form = QFormLayout(self)
        form.addRow("Checkpoint", row)
        form.addRow(self.model_info)
        form.addRow(QLabel("Image channel for each model channel:"))
        form.addRow(self.mapping_box)
        form.addRow(self.mapping_message)
        form.addRow("CAM method", self.method)
        form.addRow("Target layer", self.target_layer)
        form.addRow("Target class", self.target_class)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Device", self.device)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.open_button.clicked.connect(self._open_dialog)
        picker.changed.connect(self.refresh_mapping)
        self._populate_models()

    # ------------------------------------------------------------------ checkpoint
    def _populate_models(self) -> None:
        from napari_gradcamo.models.bundled import bundled_models

        self.model_combo.clear()
        self.model_combo.addItem("— choose a checkpoint —", None)
        for name, path in bundled_models().items():
            self.model_combo.addItem(f"{name} (demo)", str(path))

    def _on_model_chosen(self, index: int) -> None:
        path = self.model_combo.itemData(index)
        if path:
            self.load_model(path, background=True)

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a classifier checkpoint", "", "Checkpoints (*.safetensors *.pt *.pth *.bin);;bioimage.io packages (*.zip rdf.yaml *.bioimageio.yaml);;All files (*)"
        )
        if path:
            self.load_model(path, background=True)

    @property
    def model_name(self) -> str:
        """The loaded checkpoint's file name ('' when none)."""
        return Path(self.source).name if self.source else ""

    def load_model(self, path, background: bool = False) -> bool:
        """Load a checkpoint, list its target layers and map its channels.

        Reading the checkpoint (which imports torch), building the network and listing its layers are
        :func:`_load_job`'s; for a checkpoint that names its own code the job stops after reading the metadata
        and the trust question is asked here, in the GUI thread, before a second job builds it. With ``background`` (what the Checkpoint
        combo and Open… do) that job runs in a worker thread and the result is applied in the GUI thread when
        it comes (:attr:`loading` meanwhile, the choices disabled); returns True when the load started.
        Without it (scripts, tests) the job runs inline; returns False (with the reason shown) on failure."""
        if self.loading:
            self._say_error(f"{self._loading_name} is still loading; choose another checkpoint when it has loaded.")
            return False
        self._loaded_ok = False
        self._loading_name = Path(path).name
        self._info_before = (self.model_info.text(), self.model_info.styleSheet())
        self.loading = True
        self._update_enabled()
        self.model_info.setStyleSheet("")
        self.model_info.setText(escape(f"Loading {self._loading_name}…"))
        self.loading_changed.emit(True)
        self._inline = not background or self.synchronous
        if self._inline:
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            self._start_load(path, None, ask_first=True)
        finally:
            if self._inline:
                QApplication.restoreOverrideCursor()
        return self._loaded_ok if self._inline else True

    def _start_load(self, path, trusted_factory: str | None, ask_first: bool) -> None:
        from napari_gradcamo._qt.workers import start_job

        self.load_job = start_job(
            _load_job, str(path), trusted_factory, ask_first, synchronous=self._inline,
            on_return=lambda loaded: self._on_loaded(path, loaded),
            on_error=lambda error: self._load_failed(path, error),
            on_finished=self._on_load_finished,
        )

    @guarded
    def _on_load_finished(self) -> None:
        if self.load_job is not None and self.load_job.running:  # the load went on after the trust question
            return
        self.loading = False
        self._update_enabled()
        self.loading_changed.emit(False)

    @guarded
    def _load_failed(self, path, error) -> None:
        kept = f" The loaded model ({self.model_name}) is kept." if self.bundle is not None else ""
        self.model_info.setText(escape(f"Could not load {Path(path).name}: {first_line(error)}{kept}"))
        self.model_info.setStyleSheet(ERROR_TEXT_STYLE)
        notify_error(f"Could not load {Path(path).name}: {first_line(error)}")

    def _say_error(self, message: str) -> None:
        notify_error(message)

    @guarded
    def _on_loaded(self, path, loaded) -> None:
        """Show a loaded model (GUI thread): its description, target layers, classes and channel mapping; or,
        for a checkpoint that names its own code, ask first and load it (trusted) in a second job."""
        from napari_gradcamo._qt.trust_dialog import _ask, trust_message_box

        if isinstance(loaded, NeedsTrust):
            if _ask(trust_message_box(self, loaded.factory, path)):
                self._start_load(path, loaded.factory, ask_first=False)
            else:  # not trusted: nothing was imported, and the model box shows what it showed before
                self.model_info.setText(self._info_before[0])
                self.model_info.setStyleSheet(self._info_before[1])
            return
        bundle, infos, default = loaded.bundle, loaded.layer_infos, loaded.default_layer
        meta = bundle.metadata
        self.last_load_thread = loaded.thread
        self.bundle, self.layer_infos, self.source = bundle, infos, str(path)
        self.model_info.setStyleSheet("")
        self.model_info.setText(
            f"<b>{escape(Path(path).name)}</b>: {meta.architecture}<br>classes: {', '.join(meta.class_names)}<br>"
            f"channels: {', '.join(meta.channel_names)}<br>crop z×y×x: {'×'.join(map(str, meta.crop_shape))}"
            f"<br>head: {meta.head}; crops: {meta.crop_mode}<br>model voxel µm (z, y, x): "
            f"{_voxels(meta.voxel_size)} (the image's is its layer scale; crops are resampled between them)"
        )
        self.target_layer.clear()
        for info in infos:
            self.target_layer.addItem("  " * info.depth + info.label, info.name)
        names = [i.name for i in infos]
        if default not in names:  # a stored layer that cannot be used: shown, with why, so the menu never hides it
            self.target_layer.insertItem(0, f"{default}  (stored layer: not a single spatial output)", default)
            names.insert(0, default)
        self.target_layer.setCurrentIndex(names.index(default))
        self.target_class.clear()
        self.target_class.addItem(PREDICTED, None)
        for name in meta.class_names:
            self.target_class.addItem(name, name)
        self._refresh_devices()
        index = self.model_combo.findData(str(path))
        if index < 0:
            self.model_combo.addItem(Path(path).name, str(path))
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        self.refresh_mapping()
        self._loaded_ok = True
        self.model_changed.emit(bundle)

    def _refresh_devices(self) -> None:
        import torch

        devices = ["auto", "cpu"]
        if torch.cuda.is_available():
            devices.append("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append("mps")
        current = self.device.currentText()
        self.device.clear()
        self.device.addItems(devices)
        if current in devices:
            self.device.setCurrentText(current)

    def set_busy(self, busy: bool) -> None:
        """Disable choosing another checkpoint while the owner runs a job (and while one loads)."""
        self._owner_busy = bool(busy)
        self._update_enabled()

    def _update_enabled(self) -> None:
        self.open_button.setEnabled(not (self._owner_busy or self.loading))
        self.model_combo.setEnabled(not (self._owner_busy or self.loading))
        for widget in (self.method, self.target_layer, self.target_class, self.mapping_box):
            widget.setEnabled(not self.loading)

    # ------------------------------------------------------------------ channel mapping
    @guarded
    def refresh_mapping(self) -> None:
        """One combo per model channel, pre-set by name (case-insensitive); unmatched ones are flagged."""
        from napari_gradcamo.audit.run import resolve_channels

        image_names = self.picker.channel_names()
        previous = {c.property("model_channel"): c.currentText() for c in self.mapping_combos}
        while self.mapping_form.rowCount():
            self.mapping_form.removeRow(0)
        self.mapping_combos = []
        if self.bundle is None:
            self.mapping_message.setText("")
            return
        model_names = self.bundle.metadata.channel_names
        try:
            preset = resolve_channels(image_names, model_names)
        except ImageError:
            lower = [n.lower() for n in image_names]
            preset = [lower.index(m.lower()) if m.lower() in lower else None for m in model_names]
        if len(model_names) == 1 and len(image_names) == 1:
            preset = [0]  # one stain, one model channel: nothing to choose
        for i, name in enumerate(model_names):
            combo = QComboBox(self.mapping_box)
            combo.setProperty("model_channel", name)
            combo.addItem(UNMAPPED, None)
            for j, image_name in enumerate(image_names):
                combo.addItem(f"{j}: {image_name}", j)
            keep = combo.findText(previous.get(name, ""))
            if keep > 0:
                combo.setCurrentIndex(keep)
            elif preset[i] is not None:
                combo.setCurrentIndex(preset[i] + 1)
            combo.currentIndexChanged.connect(self.check_mapping)
            self.mapping_form.addRow(name, combo)
            self.mapping_combos.append(combo)
        self.check_mapping()

    def check_mapping(self, *args) -> str:
        """Validate the mapping; mark bad combos and return the problem ('' when it is fine)."""
        problem = ""
        chosen = [c.currentData() for c in self.mapping_combos]
        for combo, value in zip(self.mapping_combos, chosen):
            bad = value is None or chosen.count(value) > 1
            combo.setStyleSheet(INVALID_STYLE if bad else "")
        if self.bundle is not None:
            model_names = self.bundle.metadata.channel_names
            image_names = self.picker.channel_names()
            problem = "Tick the image layers that hold the stains." if not image_names else \
                mapping_problem(model_names, image_names, chosen)
        self.mapping_message.setText(problem)
        self.mapping_message.setStyleSheet(ERROR_TEXT_STYLE if problem else "")
        return problem

    def set_channel_map(self, channel_map) -> None:
        """Choose the image channel index for each model channel (for scripts and tests)."""
        for combo, index in zip(self.mapping_combos, channel_map):
            combo.setCurrentIndex(0 if index is None else int(index) + 1)
        self.check_mapping()

    def channel_map(self) -> list[int]:
        problem = self.check_mapping()
        if problem:
            raise ImageError(problem)
        return [int(c.currentData()) for c in self.mapping_combos]

    def audit_settings(self, rule):
        """The core :class:`~napari_gradcamo.audit.run.AuditSettings` for the current choices and flag rule."""
        from napari_gradcamo.audit.run import AuditSettings

        return AuditSettings(
            method=self.method.currentText(),
            target_layer=self.target_layer.currentData(),
            target_class=self.target_class.currentData(),
            batch_size=int(self.batch_size.value()),
            device=self.device.currentText(),
            threshold=float(rule.threshold),
            flag_on=rule.on,
            channel_map=self.channel_map(),
        )


def mapping_problem(model_names, image_names, chosen) -> str:
    """What is wrong with mapping model channel ``model_names[i]`` to image channel ``chosen[i]`` (an index,
    or None for none), in words: which model channels have no image channel, which image channel feeds two
    or more model channels (and which); the two channel lists only when they differ. '' when it is fine."""
    problems = []
    missing = [m for m, v in zip(model_names, chosen) if v is None]
    if missing:
        problems.append(f"Choose an image channel for {', '.join(missing)}")
    for v in sorted({v for v in chosen if v is not None and chosen.count(v) > 1}):
        users = [m for m, c in zip(model_names, chosen) if c == v]
        count = {2: "two", 3: "three"}.get(len(users), str(len(users)))
        problems.append(f"image channel {v}: {image_names[v]} is used for {count} model channels "
                        f"({' and '.join(users)}); choose one image channel for each")
    if not problems:
        return ""
    same = sorted(n.lower() for n in model_names) == sorted(n.lower() for n in image_names)
    lists = "" if same else (f" (the model needs {', '.join(model_names)}; the image has "
                             f"{', '.join(image_names)})")
    return f"Channel mismatch{lists}: {'; '.join(problems)}."


def _voxels(size) -> str:
    return "unknown" if size is None else " × ".join(f"{float(v):g}" for v in size)


@dataclass
class LoadedModel:
    """What :func:`_load_job` hands to the GUI thread."""

    bundle: object
    layer_infos: list
    default_layer: str
    thread: str  # the name of the thread that loaded it


@dataclass
class NeedsTrust:
    """What :func:`_load_job` returns for a checkpoint that names its own code: the GUI thread asks first."""

    factory: str


def _load_job(path: str, trusted_factory: str | None, ask_first: bool):
    """Worker body of a model load: read the checkpoint (which imports torch), build the network and list its
    target layers (seconds for a large network). With ``ask_first``, a checkpoint that names its own factory
    is not built: :class:`NeedsTrust` goes back to the GUI thread, which asks and loads it again if trusted."""
    from napari_gradcamo.models.checkpoint import checkpoint_factory, load_checkpoint
    from napari_gradcamo.models.layers import default_target_layer, list_target_layers

    yield (0, 1, f"Loading {Path(path).name}…")
    if ask_first:
        factory = checkpoint_factory(path)  # reads the metadata only: nothing named by it is imported
        if factory is not None:
            return NeedsTrust(factory)
    bundle = load_checkpoint(path, trusted_factory=trusted_factory)
    meta = bundle.metadata
    infos = list_target_layers(bundle.model, meta.crop_shape, len(meta.channel_names))
    default = meta.target_layer or default_target_layer(infos)
    return LoadedModel(bundle, infos, default, threading.current_thread().name)
