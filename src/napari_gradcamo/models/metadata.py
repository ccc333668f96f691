"""What a checkpoint says about its model: the metadata record and the error for a bad checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded safely; the message names the problem and the fix."""


@dataclass
class ModelMetadata:
    """Everything needed to rebuild a classifier and feed it crops."""

    architecture: str
    class_names: list[str]
    channel_names: list[str]
    crop_shape: list[int]  # z, y, x
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.8})
    target_layer: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    head: str = "softmax"  # softmax | sigmoid-binary | multilabel (models/heads.py)
    voxel_size: list[float] | None = None  # µm (z, y, x) of the crops the model was trained on
    crop_mode: str = "context"  # "context" (neighbours kept) or "masked" (outside the cell = padding_value)
    padding_value: float = 0.0

    REQUIRED = ("architecture", "class_names", "channel_names", "crop_shape")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> "ModelMetadata":
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise CheckpointError(
                f"Checkpoint metadata{' in ' + source if source else ''} lacks {', '.join(missing)}; "
                f"it needs {', '.join(cls.REQUIRED)} (see README, 'Checkpoint format')."
            )
        known = {f for f in cls.__dataclass_fields__}
        meta = cls(**{k: v for k, v in data.items() if k in known})
        if len(meta.crop_shape) != 3 or min(meta.crop_shape) < 1:
            raise CheckpointError(f"crop_shape {meta.crop_shape} must be three positive sizes (z, y, x).")
        if len(meta.class_names) < 2:
            raise CheckpointError("class_names must list at least two classes.")
        meta._check_input_fields()
        return meta

    def _check_input_fields(self) -> None:
        from napari_gradcamo.models.heads import check_head

        try:
            check_head(self.head, len(self.class_names))
        except ValueError as error:
            raise CheckpointError(f"Checkpoint field 'head': {error}") from None
        if self.voxel_size is not None:
            try:
                self.voxel_size = [float(v) for v in self.voxel_size]
            except (TypeError, ValueError):
                self.voxel_size = []
            if len(self.voxel_size) != 3 or min(self.voxel_size) <= 0:
                raise CheckpointError("voxel_size must be three positive sizes in µm (z, y, x), or null.")
        if self.crop_mode not in ("context", "masked"):
            raise CheckpointError(f"crop_mode '{self.crop_mode}' must be 'context' or 'masked'.")
        if not isinstance(self.padding_value, (int, float)) or not np.isfinite(self.padding_value):
            raise CheckpointError("padding_value must be a finite number.")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class ModelBundle:
    """A ready-to-run classifier (eval mode, CPU) with its metadata."""

    model: Any  # torch.nn.Module
    metadata: ModelMetadata
    source: str = ""

    def describe(self) -> str:
        m = self.metadata
        return (
            f"{m.architecture}: {len(m.class_names)} classes ({', '.join(m.class_names)}), "
            f"channels {', '.join(m.channel_names)}, crop z×y×x {'×'.join(map(str, m.crop_shape))}"
        )
