"""Variational autoencoders for single-cell crops: a plain VAE, the skip-connection VAE (SC-VAE) and the
InfoMax VAE's mutual-information critic.

* :class:`CropVAE` — encoder (the small 3D CNN trunk, or MONAI's 3D EfficientNet) → latent mean and
  log-variance → decoder (transposed 3D convolutions back to the crop). ``forward(x)`` returns the latent
  **means** (B, D), so a VAE checkpoint is a feature extractor to the profiles and a D-output "model" to the
  audit (Grad-CAM of latent unit k = Grad-CAM of ``mu_k``); :meth:`CropVAE.reconstruct` gives
  (reconstruction, mu, logvar) for training. 2D crops are crops with one z-plane (z never pooled).
* ``CropVAE(..., skip_connections=True)`` — the SC-VAE of the VAE cell-profiling work (after Zheng et al.,
  2018, arXiv:1802.06677): every convolutional layer of the encoder and of the decoder gets a shortcut
  that carries its input, resampled without learnable weights to the layer's output shape (channels by
  linear interpolation, space by averaging 2×2(×2) blocks in the encoder and trilinear upsampling in the
  decoder), added to the layer's output before its activation. The shortcuts stay *inside* the encoder and
  inside the decoder: nothing goes from the encoder to the decoder around the latent code, so the code
  still has to carry everything the reconstruction uses (see :class:`SkipStage`, :class:`SkipUp`).
* :class:`MutualInfoCritic` + :func:`interpolated_mi_bound` — the InfoMax VAE (Rezaabad & Vishwanath, 2020)
  with the interpolated lower bound I_α of Poole et al. (2019) instead of the NWJ bound, as in the VAE
  cell-profiling work.

Torch is imported when a model is built (this module is imported lazily by :mod:`.architectures`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

ENCODERS = ("small-cnn", "efficientnet-b0", "efficientnet-b1", "efficientnet-b2")


def _pools(crop_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Downsampling of the two pooled encoder stages: (1,2,2) then (2,2,2), z kept when the crop is 2D."""
    z, y, x = (int(s) for s in crop_shape)
    if y % 4 or x % 4 or (z > 1 and z % 2):
        raise ValueError(
            f"A VAE needs crops whose y and x are multiples of 4 and whose z is 1 or even; got {z}×{y}×{x} "
            "(choose e.g. --crop-shape 8 32 32, or 1 64 64 for 2D crops)."
        )
    return [(1, 2, 2), (2 if z > 1 else 1, 2, 2)]


def _small_trunk(in_channels: int, width: int, crop_shape: Sequence[int]) -> nn.Sequential:
    """The small CNN's three stages (same layer names: stage1..stage3) + global pooling."""
    from napari_gradcamo.models.backbones import small_cnn

    net = small_cnn(in_channels, 2, width)
    net.stage2[-1] = nn.MaxPool3d(_pools(crop_shape)[1])
    del net.head
    return net


def channel_resampler(c_in: int, c_out: int):
    """The fixed (c_out, c_in) matrix that linearly interpolates c_in channels to c_out (identity if equal)."""
    basis = torch.eye(c_in).unsqueeze(1)  # (c_in, 1, c_in): the unit vectors e_j as signals of length c_in
    resampled = nn.functional.interpolate(basis, size=c_out, mode="linear", align_corners=False)  # (c_in, 1, c_out)
    return resampled[:, 0, :].T.contiguous()  # column j = where e_j lands


class Shortcut(nn.Module):
    """The parameter-free SC-VAE shortcut: channels linearly interpolated c_in → c_out, then space averaged
    over ``down`` blocks (encoder) or trilinearly upsampled by ``up`` (decoder). ``gain`` (1) scales it;
    setting it to 0 switches the shortcut off (used by the tests to show the shortcuts carry signal)."""

    def __init__(self, c_in: int, c_out: int, down=None, up=None):
        super().__init__()
        self.register_buffer("mix", channel_resampler(c_in, c_out), persistent=False)
        self.down = tuple(down) if down else None
        self.up = tuple(float(u) for u in up) if up else None
        self.gain = 1.0

    def forward(self, x):
        h = torch.einsum("oc,bczyx->bozyx", self.mix.to(x.dtype), x)
        if self.down and any(d > 1 for d in self.down):
            h = nn.functional.avg_pool3d(h, self.down)
        if self.up and any(u > 1 for u in self.up):
            h = nn.functional.interpolate(h, scale_factor=self.up, mode="trilinear", align_corners=False)
        return self.gain * h


class SkipStage(nn.Module):
    """An SC-VAE encoder stage: ReLU(pool(conv-BN-ReLU-conv-BN(x)) + shortcut(x)). Without the shortcut
    it computes what the small CNN's stage computes (max-pooling and ReLU commute)."""

    def __init__(self, c_in: int, c_out: int, pool=None):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
        )
        self.pool = nn.MaxPool3d(pool) if pool else nn.Identity()
        self.skip = Shortcut(c_in, c_out, down=pool)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.pool(self.body(x)) + self.skip(x))


class SkipUp(nn.Module):
    """An SC-VAE decoder stage: ReLU(ConvT-BN-ReLU-conv-BN(x) + shortcut(x)), the shortcut upsampling
    ``stride``-fold; ``last`` = a single 3×3×3 convolution to the crop's channels plus the shortcut, no
    normalisation or activation (the reconstruction is in normalised units)."""

    def __init__(self, c_in: int, c_out: int, stride=None, last: bool = False):
        super().__init__()
        if last:
            self.body = nn.Conv3d(c_in, c_out, 3, padding=1)
            self.act = nn.Identity()
        else:
            self.body = nn.Sequential(
                nn.ConvTranspose3d(c_in, c_out, stride, stride=stride), nn.BatchNorm3d(c_out), nn.ReLU(),
                nn.Conv3d(c_out, c_out, 3, padding=1), nn.BatchNorm3d(c_out),
            )
            self.act = nn.ReLU()
        self.skip = Shortcut(c_in, c_out, up=stride)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


def _skip_trunk(in_channels: int, width: int, crop_shape: Sequence[int]) -> nn.Sequential:
    """The SC-VAE encoder: the small CNN's three stages (names stage1..stage3) with shortcuts + global pooling."""
    from collections import OrderedDict

    pools = _pools(crop_shape)
    return nn.Sequential(OrderedDict(
        stage1=SkipStage(in_channels, width, pools[0]),
        stage2=SkipStage(width, 2 * width, pools[1]),
        stage3=SkipStage(2 * width, 4 * width, None),
        pool=nn.AdaptiveAvgPool3d(1),
        flatten=nn.Flatten(),
    ))


class CropVAE(nn.Module):
    """A VAE over (B, C, z, y, x) crops; ``forward`` returns the latent means.

    ``skip_connections=True`` builds the SC-VAE (small-cnn encoder only; see the module docstring)."""

    def __init__(self, in_channels: int, crop_shape: Sequence[int], latent_dim: int = 16, width: int = 8,
                 encoder: str = "small-cnn", features: int = 64, skip_connections: bool = False):
        super().__init__()
        if latent_dim < 2:
            raise ValueError("latent_dim must be ≥ 2.")
        if encoder not in ENCODERS:
            raise ValueError(f"Unknown VAE encoder '{encoder}'; use one of {', '.join(ENCODERS)}.")
        if skip_connections and encoder != "small-cnn":
            raise ValueError(f"The skip-connection VAE (sc-vae) is built on the small CNN encoder, not '{encoder}' "
                             "(EfficientNet's blocks already have residual shortcuts); use --arch small-cnn-3d.")
        pools = _pools(crop_shape)
        self.crop_shape = tuple(int(s) for s in crop_shape)
        self.skip_connections = bool(skip_connections)
        if skip_connections:
            self.encoder = _skip_trunk(in_channels, width, crop_shape)
            features = 4 * width
        elif encoder == "small-cnn":
            self.encoder = _small_trunk(in_channels, width, crop_shape)
            features = 4 * width
        else:
            from napari_gradcamo.models.backbones import efficientnet

            self.encoder = efficientnet(encoder, in_channels, features, crop_shape)
        self.to_mu = nn.Linear(features, latent_dim)
        self.to_logvar = nn.Linear(features, latent_dim)
        z, y, x = self.crop_shape
        self._base = (4 * width, z // pools[1][0], y // 4, x // 4)
        self.from_latent = nn.Linear(latent_dim, int(math.prod(self._base)))

        def up(cin, cout, stride):
            return nn.Sequential(
                nn.ConvTranspose3d(cin, cout, stride, stride=stride), nn.BatchNorm3d(cout), nn.ReLU(),
                nn.Conv3d(cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(),
            )

        if skip_connections:
            self.decoder = nn.Sequential(SkipUp(4 * width, 2 * width, pools[1]), SkipUp(2 * width, width, pools[0]),
                                         SkipUp(width, in_channels, last=True))
        else:
            self.decoder = nn.Sequential(up(4 * width, 2 * width, pools[1]), up(2 * width, width, pools[0]),
                                         nn.Conv3d(width, in_channels, 3, padding=1))

    def encode(self, x):
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 12.0)

    def decode(self, z):
        return self.decoder(self.from_latent(z).view(z.shape[0], *self._base))

    def forward(self, x):
        return self.encode(x)[0]

    def reconstruct(self, x, sample: bool = True):
        """(reconstruction, mu, logvar, z): z drawn with the reparameterisation trick (the mean if not ``sample``)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode(z), mu, logvar, z


def build_vae(in_channels: int, crop_shape: Sequence[int], **kwargs) -> CropVAE:
    return CropVAE(in_channels, crop_shape, **kwargs)


def vae_losses(x, recon, mu, logvar):
    """Per-crop Gaussian reconstruction error (sum of squares over voxels) and KL(q(z|x) ‖ N(0, I))."""
    recon_err = ((recon - x) ** 2).flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return recon_err, kl


class MutualInfoCritic(nn.Module):
    """Separable critic f(x, z) = g(x)·h(z) / √d: a small conv embedding of the crop and an MLP of the code."""

    def __init__(self, in_channels: int, latent_dim: int, width: int = 8, dim: int = 32):
        super().__init__()
        self.g = nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d((1, 4, 4)),
            nn.Flatten(), nn.Linear(16 * width, dim),
        )
        self.h = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x, z):
        """Scores S[i, j] = f(x_i, z_j) for every pair in the batch (B, B)."""
        return self.g(x) @ self.h(z).T * self.scale


def interpolated_mi_bound(scores, alpha: float = 0.5):
    """In-batch estimate of Poole et al.'s interpolated bound I_α (nats), baseline q(z) = 1.

    ``scores[i, j]`` = f(x_i, z_j), (x_i, z_i) drawn jointly. Joint term: m_j = mean_k exp(S[k, j]) over the
    whole batch (the paired x_j included); marginal term: z_j against the other crops only, with the
    leave-one-out m'_j = mean_{k≠j} exp(S[k, j]). With b(m) = α·m + (1 − α):
    I_α = 1 + mean_j [S[j, j] − log b(m_j)] − mean_{i≠j} [exp(S[i, j]) / b(m'_j)].
    α = 1 gives InfoNCE (≤ log B), α = 0 the NWJ bound with a constant baseline.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("The interpolation α must lie in [0, 1].")
    n = scores.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    log_m = torch.logsumexp(scores, dim=0) - math.log(n)
    log_m_out = torch.logsumexp(scores.masked_fill(~off, -math.inf), dim=0) - math.log(n - 1)

    def log_baseline(log_mean):
        if alpha == 0.0:
            return torch.zeros_like(log_mean)
        if alpha == 1.0:
            return log_mean
        return torch.logaddexp(log_mean + math.log(alpha), torch.full_like(log_mean, math.log(1.0 - alpha)))

    joint = (scores.diagonal() - log_baseline(log_m)).mean()
    marginal = torch.exp(scores - log_baseline(log_m_out)[None, :])[off].mean()
    return 1.0 + joint - marginal
