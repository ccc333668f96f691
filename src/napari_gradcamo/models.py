"""3D classifiers and their checkpoints: safetensors weights + JSON metadata, never pickle."""

from __future__ import annotations

import importlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

METADATA_KEY = "napari_gradcamo"
FORMAT_VERSION = 1
EFFICIENTNET_NAMES = tuple(f"efficientnet-b{i}" for i in range(8))
SMALL_CNN = "small-cnn-3d"
CUSTOM = "custom"

# MBConv stage definitions of EfficientNet-B0 (Tan & Le, 2019); b1..b7 scale them by width and depth.
_EFFICIENTNET_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


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


def _small_cnn(in_channels: int, num_classes: int, width: int = 16):
    """A small, fast 3D CNN: three conv stages (z kept at stage 1), global average pooling, linear head."""
    import torch.nn as nn

    def stage(cin, cout, pool):
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=False),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=False),
            nn.MaxPool3d(pool) if pool else nn.Identity(),
        )

    return nn.Sequential(
        OrderedDict(
            stage1=stage(in_channels, width, (1, 2, 2)),
            stage2=stage(width, 2 * width, (2, 2, 2)),
            stage3=stage(2 * width, 4 * width, None),
            pool=nn.AdaptiveAvgPool3d(1),
            flatten=nn.Flatten(),
            head=nn.Linear(4 * width, num_classes),
        )
    )


def _efficientnet(name: str, in_channels: int, num_classes: int, crop_shape: Sequence[int], **kwargs):
    """MONAI's 3D EfficientNet with 'same' padding sized for the crop (works at 21 slices)."""
    from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params

    width, depth, _, dropout, dropconnect = efficientnet_params[name]
    return EfficientNet(
        blocks_args_str=_EFFICIENTNET_BLOCKS,
        spatial_dims=3,
        in_channels=in_channels,
        num_classes=num_classes,
        width_coefficient=width,
        depth_coefficient=depth,
        dropout_rate=kwargs.pop("dropout_rate", dropout),
        image_size=int(min(crop_shape)),
        drop_connect_rate=kwargs.pop("drop_connect_rate", dropconnect),
        **kwargs,
    )


def _import_factory(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CheckpointError(f"Factory '{spec}' must look like 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as error:
        raise CheckpointError(f"Cannot import model factory '{spec}': {error}. Install the package that defines it.") from error


def build_model(metadata: ModelMetadata):
    """Build an untrained network for ``metadata`` (weights are loaded separately)."""
    arch = metadata.architecture
    kwargs = dict(metadata.architecture_kwargs)
    in_ch, n_cls = len(metadata.channel_names), len(metadata.class_names)
    if arch in EFFICIENTNET_NAMES:
        return _efficientnet(arch, in_ch, n_cls, metadata.crop_shape, **kwargs)
    if arch == SMALL_CNN:
        return _small_cnn(in_ch, n_cls, **kwargs)
    if arch == CUSTOM:
        factory = kwargs.pop("factory", None)
        if not factory:
            raise CheckpointError("A 'custom' architecture needs architecture_kwargs.factory = 'package.module:function'.")
        return _import_factory(factory)(in_channels=in_ch, num_classes=n_cls, **kwargs)
    raise CheckpointError(
        f"Unknown architecture '{arch}'. Known: {', '.join(EFFICIENTNET_NAMES)}, {SMALL_CNN}, "
        f"or '{CUSTOM}' with a factory."
    )


def save_checkpoint(path: str | Path, model, metadata: ModelMetadata) -> Path:
    """Write ``model``'s weights and ``metadata`` to one ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: metadata.to_json()})
    return path


def _read_safetensors(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own SafetensorError and OSError variants
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file ({error}); the file is corrupt or truncated. "
            "Copy it again or re-export it with napari_gradcamo.models.save_checkpoint."
        ) from error
    if METADATA_KEY in header:
        return state, json.loads(header[METADATA_KEY])
    return state, None


def _read_state_dict_pt(path: Path):
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Refused {path.name}: it is a pickled Python object (e.g. a whole model saved with torch.save(model)), "
            "and loading it could run arbitrary code. Save only the weights: "
            "torch.save(model.state_dict(), 'model.pt') plus a JSON metadata file, or use save_checkpoint()."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path.name} is not a readable PyTorch weights file ({error}); it looks corrupt.") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict (a mapping of names to tensors).")
    return state


def _sidecar_metadata(path: Path) -> dict | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return None
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"Metadata file {sidecar.name} is not valid JSON: {error}.") from error


def load_checkpoint(path: str | Path) -> ModelBundle:
    """Load a classifier safely from ``.safetensors`` (metadata inside or beside) or a ``.pt`` state dict."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
    elif path.suffix in (".pt", ".pth", ".bin"):
        state, meta = _read_state_dict_pt(path), None
    else:
        raise CheckpointError(f"{path.name}: unknown checkpoint type; use .safetensors (preferred) or a .pt state dict.")
    meta = meta or _sidecar_metadata(path)
    if meta is None:
        raise CheckpointError(
            f"{path.name} carries no napari-gradcamo metadata and no {path.with_suffix('.json').name} lies beside it; "
            "write one with architecture, class_names, channel_names and crop_shape."
        )
    metadata = ModelMetadata.from_dict(meta, path.name)
    model = build_model(metadata)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"The weights in {path.name} do not fit architecture '{metadata.architecture}' "
            f"with {len(metadata.channel_names)} channels and {len(metadata.class_names)} classes: {error}"
        ) from error
    model.eval()
    return ModelBundle(model, metadata, str(path))


def normalize_crops(crops: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    """Normalise a batch of crops (B, C, z, y, x) as the model was trained."""
    method = normalization.get("method", "none")
    crops = crops.astype(np.float32, copy=False)
    if method == "none":
        return crops
    if method == "fixed":
        mean = np.asarray(normalization["mean"], np.float32)[None, :, None, None, None]
        std = np.asarray(normalization["std"], np.float32)[None, :, None, None, None]
        return (crops - mean) / np.maximum(std, 1e-6)
    if method == "percentile":
        flat = crops.reshape(crops.shape[0], crops.shape[1], -1)
        low = np.percentile(flat, normalization.get("low", 1.0), axis=-1)[..., None, None, None]
        high = np.percentile(flat, normalization.get("high", 99.8), axis=-1)[..., None, None, None]
        return (crops - low) / np.maximum(high - low, 1e-6)
    raise CheckpointError(f"Unknown normalization method '{method}'; use 'fixed', 'percentile' or 'none'.")
