"""'Profile quality' panel of the Profiles dock: metrics of the shown profiles, and the UMAP coloured by
each cell's local quality (the share of its k nearest neighbours among the crops that stay its neighbours
among the profiles; see :mod:`napari_gradcamo.profiles.metrics`).

Computed profiles: the metrics are computed here, against the crops of the viewer's image. A loaded
``cells.parquet`` / ``umap.parquet`` from ``gradcamo profile --metrics`` brings its own ``local_quality``
column, and the ``metrics.json`` beside it is shown.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFormLayout, QGroupBox, QLabel, QPushButton, QSpinBox

from napari_gradcamo._qt import layers as L
from napari_gradcamo.progress import Cancelled, check

LOCAL_QUALITY = "local_quality"
SHOWN = ("cells", "k", "trustworthiness", "continuity", "lcmc", "knn_accuracy", "linear_accuracy",
         "replicate_map", "activity_map", "backbone_spearman", "mine_nats")


def _metrics_job(image, labels, bundle, table, k, cancel):
    from napari_gradcamo.crops.datasets import cropset_from_image
    from napari_gradcamo.profiles.extract import SPHERED_PREFIX, feature_columns
    from napari_gradcamo.profiles.metrics import table_metrics

    yield (0, 2, "crops of the image…")
    data = cropset_from_image(image, labels, bundle)
    check(cancel, "the profile metrics")
    yield (1, 2, "neighbourhoods, classifiers, mAP…")
    result = table_metrics(table, data.x, feature_columns(table, SPHERED_PREFIX), k=k)
    yield (2, 2, "done")
    return result


def format_metrics(metrics: dict) -> str:
    """The headline metrics, one per line (missing ones — e.g. a single well — as their note)."""
    lines = [f"{key}: {metrics[key]:.3f}" if isinstance(metrics[key], float) else f"{key}: {metrics[key]}"
             for key in SHOWN if metrics.get(key) is not None]
    lines += [f"{key[: -len('_note')]}: {v}" for key, v in metrics.items() if key.endswith("_note")]
    return "\n".join(lines)


class ProfileMetricsPanel(QGroupBox):
    """Metrics of the Profiles dock's table; sets its ``local_quality`` column and colours the UMAP by it."""

    def __init__(self, profiles_widget):
        super().__init__("Profile quality", profiles_widget)
        self.owner = profiles_widget
        self.metrics: dict = {}
        form = QFormLayout(self)
        self.k_spin = QSpinBox(self)
        self.k_spin.setRange(2, 100)
        self.k_spin.setValue(10)
        self.k_spin.setToolTip("Neighbourhood size k of trustworthiness, continuity, LCMC and the local quality.")
        self.compute_button = QPushButton("Compute metrics", self)
        self.compute_button.setToolTip("Rank-based neighbourhood preservation against the crops, per-cell local "
                                       "quality; classifier accuracy and mAP need several wells (CLI).")
        self.compute_button.clicked.connect(lambda: self.compute())
        self.text = QLabel("no metrics", self)
        self.text.setWordWrap(True)
        form.addRow("k", self.k_spin)
        form.addRow(self.compute_button)
        form.addRow(self.text)

    def compute(self) -> bool:
        owner = self.owner
        if owner.table is None or owner.bundle is None or owner.labels_layer is None:
            owner.panel.say("Compute profiles (model + labels) before their metrics.", error=True)
            return False
        try:
            image = owner.picker.image()
            labels = np.asarray(L.labels_volume(owner.labels_layer))
        except ValueError as error:
            owner.panel.say(str(error), error=True)
            return False
        owner.panel.start("Profile quality…", _metrics_job, image, labels, owner.bundle, owner.table,
                          int(self.k_spin.value()), on_return=self._on_computed, on_error=self._on_error)
        return True

    def _on_error(self, error) -> None:
        if isinstance(error, Cancelled):
            self.owner.panel.end("Profile metrics cancelled.")
            return
        self.owner.panel.end(f"Profile metrics failed: {error}", error=True)

    def _on_computed(self, result) -> None:
        if result is None:
            self.owner.panel.end("Profile metrics cancelled.")
            return
        metrics, quality = result
        self.owner.table[LOCAL_QUALITY] = quality
        self.show_metrics(metrics)
        self.owner.panel.end(f"Profile quality of {metrics['cells']} cells (k = {metrics['k']}).")

    def show_metrics(self, metrics: dict) -> None:
        self.metrics = dict(metrics)
        self.text.setText(format_metrics(metrics))
        self.color_by_quality()

    def color_by_quality(self) -> None:
        owner = self.owner
        if owner.table is not None and LOCAL_QUALITY in owner.table.columns:
            owner.refresh_color_choices(prefer=LOCAL_QUALITY)

    def table_loaded(self, path) -> None:
        """Show the ``metrics.json`` written beside a loaded table, if any (it is validated as a JSON object)."""
        sidecar = Path(str(path)).with_name("metrics.json")
        try:
            metrics = json.loads(sidecar.read_text()) if sidecar.exists() else None
        except (OSError, json.JSONDecodeError):
            metrics = None
        if isinstance(metrics, dict):
            self.show_metrics(metrics)
        else:
            self.text.setText("no metrics.json beside this table")
            self.color_by_quality()
