"""Virtual-stain checkpoints: one ``.safetensors`` file (U-Net + optional guidance classifier) whose header
holds the JSON metadata; written atomically (temporary file in the same folder, then ``os.replace``).
No pickles; every metadata field is validated before a network is built from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gradcamo.io.atomic import temp_file
from napari_gradcamo.progress import Steps, drain
from napari_gradcamo.virtual_stain.data import StainScaling, normalise_brightfield
from napari_gradcamo.virtual_stain.diffusion import Schedule, iter_sample
from napari_gradcamo.virtual_stain.model import (
    ClassifierConfig,
    NoisyClassifier,
    UNetConfig,
    VirtualStainError,
    build_unet,
    check_names,
    config_from_dict,
    config_to_dict,
    non_finite_weights,
)

HEADER_KEY = "napari_gradcamo_virtual_stain"
FORMAT_VERSION = 1


@dataclass
class VirtualStainModel:
    """A trained virtual-stain model with everything needed to predict."""

    unet: Any
    unet_config: UNetConfig
    schedule: Schedule
    scaling: StainScaling
    stain_names: list[str]
    class_names: list[str]
    defocus_um: list[float]
    classifier: Any = None
    classifier_config: ClassifierConfig | None = None
    training: dict = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.unet_config.n_classes is not None

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION, "kind": "virtual_stain",
            "unet": config_to_dict(self.unet_config),
            "classifier": None if self.classifier_config is None else config_to_dict(self.classifier_config),
            "schedule": {"num_train_timesteps": self.schedule.num_train_timesteps,
                         "beta_start": self.schedule.beta_start, "beta_end": self.schedule.beta_end},
            "scaling": self.scaling.to_dict(),
            "stain_names": list(self.stain_names), "class_names": list(self.class_names),
            "defocus_um": list(self.defocus_um), "training": self.training,
        }

    def predict_image(self, brightfield: np.ndarray, *, progress=None, **kwargs) -> np.ndarray:
        """Stains ``(C, Y, X)`` in camera units for one brightfield image ``(P, Y, X)`` of any size:
        :meth:`iter_predict_image` (same arguments) run to its end, its steps handed to ``progress``."""
        return drain(self.iter_predict_image(brightfield, **kwargs), progress)

    def iter_predict_image(self, brightfield: np.ndarray, *, klass: int | None = None, guidance_scale: float = 0.0,
                           sampler: str = "ddim", steps: int = 25, seed: int = 0, device: str = "cpu",
                           cancel=None) -> Steps[np.ndarray]:
        """The prediction as steps, one per sampling step. The image is reflect-padded to the U-Net's
        multiple and sampled whole."""
        bf = normalise_brightfield(brightfield)
        if bf.shape[0] != self.unet_config.condition_channels:
            raise VirtualStainError(
                f"the model expects {self.unet_config.condition_channels} brightfield planes "
                f"(defocus {self.defocus_um} µm), the image has {bf.shape[0]}.")
        depth = 2 ** (len(self.unet_config.widths) - 1)
        h, w = bf.shape[1:]
        pad = ((0, 0), (0, -h % depth), (0, -w % depth))
        bf = np.pad(bf, pad, mode="reflect")
        klass = self._check_class(klass)
        if sampler not in ("ddim", "ddpm"):
            raise VirtualStainError(f"sampler {sampler!r} must be 'ddim' or 'ddpm'.")
        if guidance_scale and klass is None:
            raise VirtualStainError("classifier guidance needs a class: pick one or set the guidance scale to 0.")
        out = yield from iter_sample(
            self.unet, self.schedule, bf[None], classes=[klass], classifier=self.classifier,
            guidance_scale=guidance_scale, guidance_classes=None if klass is None else [klass], sampler=sampler,
            steps=steps, seed=seed, device=device, prediction=self.unet_config.prediction, cancel=cancel)
        stains = self.scaling.to_camera(out[0, :, :h, :w])
        if not np.isfinite(stains).all():
            raise VirtualStainError("the prediction holds NaN or inf (the model's weights or the brightfield image "
                                    "are not usable); nothing was written. Retrain the model or check the image.")
        return stains

    def _check_class(self, klass):
        if klass is None:
            return None
        if not 0 <= int(klass) < len(self.class_names):
            raise VirtualStainError(f"class must be in 0..{len(self.class_names) - 1} ({self.class_names}), got {klass}.")
        return int(klass)


def save_model(path: str | Path, model: VirtualStainModel, *, overwrite: bool = False) -> Path:
    """Write weights and metadata atomically; refuse to replace an existing file unless ``overwrite``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise VirtualStainError(f"{path.name}: a virtual-stain model is saved as a .safetensors file.")
    if path.exists() and not overwrite:
        raise VirtualStainError(f"{path} exists; choose another name or pass overwrite (--overwrite).")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"unet.{k}": v.detach().contiguous().cpu() for k, v in model.unet.state_dict().items()}
    if model.classifier is not None:
        state.update({f"classifier.{k}": v.detach().contiguous().cpu() for k, v in model.classifier.state_dict().items()})
    tmp = str(temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        save_file(state, tmp, metadata={HEADER_KEY: json.dumps(model.metadata())})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _names(value, what: str) -> list[str]:
    if not isinstance(value, list):
        raise VirtualStainError(f"{what} must be a non-empty list of names, got {value!r}.")
    return check_names(value, what)


def load_model(path: str | Path) -> VirtualStainModel:
    """Read a checkpoint written by :func:`save_model` (any other file is refused with the reason)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise VirtualStainError(f"{path} does not exist; train one with 'gradcamo virtual-stain train'.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(HEADER_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises several error types for a bad file
        raise VirtualStainError(f"{path.name} is not a readable safetensors file ({error}).") from error
    if header is None:
        raise VirtualStainError(f"{path.name} holds no virtual-stain metadata; it is not a virtual-stain model.")
    from napari_gradcamo.io.limits import loads_json

    meta = loads_json(header, f"{path.name}: its metadata", VirtualStainError)
    if not isinstance(meta, dict) or meta.get("kind") != "virtual_stain" or meta.get("format_version") != FORMAT_VERSION:
        raise VirtualStainError(f"{path.name}: not a version-{FORMAT_VERSION} virtual-stain checkpoint.")
    unet_config = config_from_dict(UNetConfig, meta.get("unet"), "metadata 'unet'")
    classifier_config = None
    if meta.get("classifier") is not None:
        classifier_config = config_from_dict(ClassifierConfig, meta["classifier"], "metadata 'classifier'")
    stain_names = _names(meta.get("stain_names"), "stain_names")
    class_names = _names(meta.get("class_names"), "class_names")
    if len(stain_names) != unet_config.stain_channels:
        raise VirtualStainError(f"{len(stain_names)} stain names for {unet_config.stain_channels} output channels.")
    defocus = meta.get("defocus_um")
    if not isinstance(defocus, list) or len(defocus) != unet_config.condition_channels:
        raise VirtualStainError(f"defocus_um must list one value per brightfield plane, got {defocus!r}.")
    _check_size(unet_config, classifier_config, state, path)
    unet = build_unet(unet_config)
    classifier = NoisyClassifier(classifier_config) if classifier_config is not None else None
    _load_state(unet, state, "unet.", path)
    if classifier is not None:
        _load_state(classifier, state, "classifier.", path)
    for module, what in ((unet, "U-Net"), (classifier, "guidance classifier")):
        bad = non_finite_weights(module) if module is not None else []
        if bad:
            raise VirtualStainError(f"{path.name}: the {what}'s weights {bad[:3]} hold NaN or inf (a diverged "
                                    "training or a damaged file): every prediction would be NaN. Retrain the model.")
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    return VirtualStainModel(
        unet.eval(), unet_config, Schedule.from_dict(meta.get("schedule")), StainScaling.from_dict(meta.get("scaling")),
        stain_names, class_names, [float(d) for d in defocus], classifier, classifier_config, training)


#: Bounds on a U-Net a checkpoint may declare (the paper's has 4 levels): deeper is not a model this program wrote.
MAX_LEVELS, MAX_LAYERS_PER_BLOCK = 8, 8


def _check_size(unet_config: UNetConfig, classifier_config, state: dict, path: Path) -> None:
    """Before a network is built: its declared size fits in memory and its parameters are the file's.

    The networks are built on torch's ``meta`` device (shapes only, nothing allocated); a checkpoint whose
    metadata declares widths that would need 160 GB is refused here instead of being allocated."""
    import torch

    from napari_gradcamo.io.limits import check_allocation

    for config, what in ((unet_config, "unet"), (classifier_config, "classifier")):
        if config is not None and len(config.widths) > MAX_LEVELS:
            raise VirtualStainError(f"{path.name}: metadata '{what}' declares {len(config.widths)} levels (at most "
                                    f"{MAX_LEVELS}); the file is damaged or not a virtual-stain model.")
    if unet_config.layers_per_block > MAX_LAYERS_PER_BLOCK:
        raise VirtualStainError(f"{path.name}: layers_per_block {unet_config.layers_per_block} (at most "
                                f"{MAX_LAYERS_PER_BLOCK}); the file is damaged or not a virtual-stain model.")
    with torch.device("meta"):
        shapes = {f"unet.{k}": (tuple(v.shape), v.dtype) for k, v in build_unet(unet_config).state_dict().items()}
        if classifier_config is not None:
            shapes.update({f"classifier.{k}": (tuple(v.shape), v.dtype)
                           for k, v in NoisyClassifier(classifier_config).state_dict().items()})
    total = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in shapes.values())
    check_allocation(total, f"{path.name}: the network its metadata declares", VirtualStainError,
                     "the file is damaged or was made for a larger machine")
    for name, (shape, _) in shapes.items():
        if name not in state or tuple(state[name].shape) != shape:
            found = tuple(state[name].shape) if name in state else "nothing"
            raise VirtualStainError(f"{path.name}: the metadata declares {name} of shape {shape}, the file holds "
                                    f"{found}; the weights do not fit their metadata (a damaged or edited file).")


def _load_state(module, state: dict, prefix: str, path: Path) -> None:
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as error:
        raise VirtualStainError(f"{path.name}: the {prefix[:-1]} weights do not fit its metadata ({error}).") from error
    module.eval()
