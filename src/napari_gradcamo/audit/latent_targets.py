"""Grad-CAMO for self-supervised encoders: explain a latent unit, or the latent mean projected on a direction.

A VAE checkpoint (``vae-3d``) already works in the audit as it is: its ``forward`` returns the latent means
μ(x) ∈ R^D and its ``class_names`` name the latent units, so the audit's "predicted class" is the unit with
the largest mean and its map is the Grad-CAM of μ_k(x) at the chosen encoder layer.

:func:`projection_bundle` wraps an encoder in a thin module whose "logits" are projections of μ(x) on chosen
unit directions d_1..d_K: s_k(x) = d_k · μ(x). The audit, the batch loop (``score_batch``), the table and the
GUI then run unchanged: the map of "class" k is the Grad-CAM of s_k at the target layer, i.e. where in the crop
the activations that *increase* the projection on d_k lie. With a single direction the wrapper outputs
(s, −s) named (``name``, ``-name``), so the audit explains whichever side of the direction the cell lies on;
pass ``targets=[0] * N`` to ``score_batch`` to always explain +d. Its "probabilities" are a softmax of the
projections: they carry no calibrated meaning. The typical direction is :func:`class_direction`: the
difference of two classes' mean latent profiles (e.g. control → highest dose), normalised to unit length.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from napari_gradcamo.models.metadata import ModelBundle


def _projection_module(encoder_model, directions: np.ndarray):
    import torch

    class LatentProjection(torch.nn.Module):
        """s(x) = μ(x) @ Dᵀ, sharing (not copying) the encoder's modules, so layer names stay the same."""

        def __init__(self, vae, directions):
            super().__init__()
            self.encoder = vae.encoder
            self.to_mu = vae.to_mu
            d = torch.as_tensor(np.asarray(directions, np.float32))
            self.register_buffer("directions", torch.cat([d, -d]) if len(d) == 1 else d)

        def forward(self, x):
            return self.to_mu(self.encoder(x)) @ self.directions.T

    return LatentProjection(encoder_model, directions).eval()


def projection_bundle(bundle: ModelBundle, directions: np.ndarray | Sequence[Sequence[float]],
                      names: Sequence[str] | None = None) -> ModelBundle:
    """A bundle whose outputs are the latent means of ``bundle``'s VAE projected on ``directions`` (K, D)."""
    from napari_gradcamo.models.architectures import is_vae

    if not is_vae(bundle.metadata):
        raise ValueError("Latent directions need a VAE checkpoint (architecture 'vae-3d').")
    d = np.atleast_2d(np.asarray(directions, np.float64))
    latent = len(bundle.metadata.class_names)
    if d.shape[1] != latent or not np.isfinite(d).all() or (np.linalg.norm(d, axis=1) == 0).any():
        raise ValueError(f"Each direction must be a finite, non-zero vector of the latent size {latent}.")
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    names = list(names) if names is not None else [f"dir{k}" for k in range(len(d))]
    if len(names) != len(d):
        raise ValueError("Give one name per direction.")
    if len(d) == 1:
        names = [names[0], f"-{names[0]}"]
    meta = copy.deepcopy(bundle.metadata)
    meta.class_names = names
    meta.training = {**meta.training, "latent_directions": d.tolist()}
    return ModelBundle(_projection_module(bundle.model, d), meta, f"{bundle.source} (latent projection)")


def unit_direction(latent_dim: int, unit: int) -> np.ndarray:
    """The direction that picks latent unit ``unit`` alone."""
    if not 0 <= unit < latent_dim:
        raise ValueError(f"Latent unit {unit} is out of range 0..{latent_dim - 1}.")
    return np.eye(latent_dim)[unit]


def class_direction(profiles: np.ndarray, classes: Sequence, from_class: str, to_class: str) -> np.ndarray:
    """Unit vector from the mean profile of ``from_class`` cells to that of ``to_class`` cells."""
    classes = np.asarray(classes).astype(str)
    profiles = np.asarray(profiles, np.float64)
    for c in (from_class, to_class):
        if not (classes == c).any():
            raise ValueError(f"No cell of class '{c}' to define the direction; classes present: {sorted(set(classes))}.")
    d = profiles[classes == to_class].mean(0) - profiles[classes == from_class].mean(0)
    norm = np.linalg.norm(d)
    if norm == 0:
        raise ValueError(f"Classes '{from_class}' and '{to_class}' have the same mean profile: no direction.")
    return d / norm


def latent_means(bundle: ModelBundle, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """μ(x) for raw crops (N, C, z, y, x), normalised as the checkpoint says."""
    import torch

    from napari_gradcamo.models.checkpoint import normalize_crops

    out = []
    bundle.model.eval()
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            x = normalize_crops(np.asarray(crops[start : start + batch_size]), bundle.metadata.normalization)
            out.append(bundle.model(torch.as_tensor(x)).float().numpy())
    return np.concatenate(out)
