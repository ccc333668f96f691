"""What a checkpoint says about its model: the metadata record and the error for a bad checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

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
        return meta

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
