"""Training and sampling: DDPM/DDIM with diffusers' schedulers (U-Net predicts y_0 or ε), optional classifier guidance.

Classifier guidance (Dhariwal & Nichol, the seed's Algorithm 2) shifts each step's mean by
``s · Σ_t · ∇ log p(k | y_t)``.  It is applied through the predicted noise,
``ε̂ = ε_θ - s · sqrt(1 - ᾱ_t) · ∇ log p(k | y_t)``, so the same code guides both the DDPM and the DDIM
scheduler; for DDPM this is the seed's mean shift up to a factor ``1/sqrt(α_t)`` (< 1.003 here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_gradcamo.progress import CancelToken, ProgressCallback, Steps, check, drain, report
from napari_gradcamo.virtual_stain.data import PairedImage, StainScaling, random_crops
from napari_gradcamo.virtual_stain.model import VirtualStainError

SAMPLERS = ("ddim", "ddpm")


@dataclass
class Schedule:
    """Linear noise schedule of Palette and the seed paper: T = 2000, β from 1e-6 to 0.01."""

    num_train_timesteps: int = 2000
    beta_start: float = 1e-6
    beta_end: float = 0.01

    @classmethod
    def from_dict(cls, data) -> "Schedule":
        try:
            s = cls(int(data["num_train_timesteps"]), float(data["beta_start"]), float(data["beta_end"]))
        except (TypeError, KeyError, ValueError) as error:
            raise VirtualStainError(f"schedule must hold num_train_timesteps, beta_start, beta_end: {error}.") from error
        if s.num_train_timesteps < 2 or not 0 < s.beta_start < s.beta_end < 1:
            raise VirtualStainError(f"invalid schedule {asdict(s)}: need T >= 2 and 0 < beta_start < beta_end < 1.")
        return s


def make_scheduler(schedule: Schedule, sampler: str = "ddim"):
    """A fresh diffusers DDIM or DDPM scheduler on ``schedule`` (x0 clipped to ±1.5)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler not in SAMPLERS:
        raise VirtualStainError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return cls(num_train_timesteps=schedule.num_train_timesteps, beta_start=schedule.beta_start,
               beta_end=schedule.beta_end, beta_schedule="linear", clip_sample=True, clip_sample_range=1.5,
               prediction_type="epsilon", timestep_spacing="trailing")


def _noised(scheduler, stains: torch.Tensor, generator: torch.Generator, low_noise_bias: bool = False):
    """``y_t`` at random timesteps (uniform, or ``T·u²`` to favour low noise when ``low_noise_bias``)."""
    noise = torch.randn(stains.shape, generator=generator)
    T = scheduler.config.num_train_timesteps
    if low_noise_bias:
        t = (T * torch.rand(stains.shape[0], generator=generator) ** 2).long().clamp_max(T - 1)
    else:
        t = torch.randint(0, T, (stains.shape[0],), generator=generator)
    return scheduler.add_noise(stains, noise, t), noise, t


def train_denoiser(unet, pairs: Sequence[PairedImage], scaling: StainScaling, schedule: Schedule, *,
                   steps: int, crop: int = 32, batch: int = 8, lr: float = 5e-4, label_dropout: float = 0.2,
                   seed: int = 0, device: str = "cpu", prediction: str = "sample",
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[float]:
    """Train the U-Net to predict the clean stains (or the noise) from ``y_t``, the brightfield (and the class).

    A labelled U-Net sees its "no label" class with probability ``label_dropout`` so it can also sample
    without a label.  Returns the loss of every step.
    """
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    scheduler = make_scheduler(schedule, "ddpm")
    null = unet.config.num_class_embeds - 1 if unet.config.num_class_embeds else None
    unet.to(device).train()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(int(steps)):
        check(cancel, "training")
        bf, st, cls = (torch.from_numpy(a) for a in random_crops(pairs, scaling, crop, batch, rng))
        noisy, noise, t = _noised(scheduler, st, gen)
        labels = None
        if null is not None:
            drop = torch.rand(len(cls), generator=gen) < label_dropout
            labels = torch.where(drop, torch.full_like(cls, null), cls).to(device)
        pred = unet(torch.cat([noisy, bf], 1).to(device), t.to(device), class_labels=labels).sample
        loss = F.mse_loss(pred, (st if prediction == "sample" else noise).to(device))
        _optimise(optimiser, loss, losses)
        report(progress, step + 1, steps, f"denoiser step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    unet.eval()
    return losses


def _optimise(optimiser, loss, losses: list[float]) -> None:
    """One optimiser step on ``loss``, logged in ``losses``."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    losses.append(loss.item())


def train_noisy_stain_classifier(classifier, pairs: Sequence[PairedImage], scaling: StainScaling, schedule: Schedule, *,
                     steps: int, crop: int = 32, batch: int = 16, lr: float = 1e-3, seed: int = 0,
                     device: str = "cpu", progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None) -> list[float]:
    """Train ``p(k | y_t)`` on noised stains (cross-entropy); returns the losses.

    Timesteps are drawn as ``T·u²`` (half of them below T/4): at high noise the class cannot be told, and
    the guidance matters most near the end of sampling.
    """
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed + 7919), torch.Generator().manual_seed(seed + 7919)
    scheduler = make_scheduler(schedule, "ddpm")
    classifier.to(device).train()
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=lr)
    losses = []
    for step in range(int(steps)):
        check(cancel, "classifier training")
        _, st, cls = (torch.from_numpy(a) for a in random_crops(pairs, scaling, crop, batch, rng))
        noisy, _, t = _noised(scheduler, st, gen, low_noise_bias=True)
        loss = F.cross_entropy(classifier(noisy.to(device), t.to(device)), cls.to(device))
        _optimise(optimiser, loss, losses)
        report(progress, step + 1, steps, f"classifier step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    classifier.eval()
    return losses


def _class_tensor(unet, classes, n: int, device) -> torch.Tensor | None:
    """Class labels for the U-Net: None for an unlabelled U-Net; the "no label" class where a class is None."""
    embeds = unet.config.num_class_embeds
    if not embeds:
        return None
    null = embeds - 1
    if classes is None:
        classes = [None] * n
    values = [null if c is None or int(c) < 0 else int(c) for c in classes]
    if any(not 0 <= v <= null for v in values):
        raise VirtualStainError(f"class labels must be in 0..{null - 1} (or None for no label), got {list(classes)}.")
    return torch.tensor(values, dtype=torch.long, device=device)


def guidance_gradient(classifier, y_t: torch.Tensor, t: int, classes: torch.Tensor) -> torch.Tensor:
    """``∇_{y_t} log p(k | y_t)`` for each sample's class ``k``."""
    with torch.enable_grad():
        y = y_t.detach().requires_grad_(True)
        steps = torch.full((y.shape[0],), int(t), dtype=torch.long, device=y.device)
        log_p = torch.log_softmax(classifier(y, steps), dim=1)
        chosen = log_p[torch.arange(y.shape[0], device=y.device), classes].sum()
        (grad,) = torch.autograd.grad(chosen, y)
    return grad


def sample(*args, progress: ProgressCallback | None = None, **kwargs) -> np.ndarray:
    """Stains ``(N, C, H, W)`` in model units from normalised brightfield ``(N, P, H, W)``:
    :func:`iter_sample` (same arguments) run to its end, its steps handed to ``progress``."""
    return drain(iter_sample(*args, **kwargs), progress)


@torch.no_grad()
def iter_sample(unet, schedule: Schedule, brightfield: np.ndarray, *, classes=None, classifier=None,
                guidance_scale: float = 0.0, guidance_classes=None, sampler: str = "ddim", steps: int = 25,
                eta: float = 0.0, seed: int = 0, device: str = "cpu", prediction: str = "sample",
                cancel: CancelToken | None = None) -> Steps[np.ndarray]:
    """Sampling as steps, one per denoising step (a cancel acts between steps).

    ``classes``: per-sample class for the AdaGN U-Net (None = the "no label" class; ignored by an
    unlabelled U-Net).  ``guidance_scale`` s > 0 needs a ``classifier`` and ``guidance_classes`` (default:
    ``classes``).  The same ``seed`` gives the same initial noise (and DDPM noise) for every call.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= schedule.num_train_timesteps:
        raise VirtualStainError(f"steps must be a whole number from 1 to {schedule.num_train_timesteps} (sampling "
                                f"steps, --steps), got {steps!r}.")
    if not isinstance(guidance_scale, (int, float, np.number)) or not np.isfinite(guidance_scale):
        raise VirtualStainError(f"guidance_scale must be a finite number (--guidance-scale), got {guidance_scale!r}.")
    bf = torch.as_tensor(np.asarray(brightfield, np.float32), device=device)
    n, _, h, w = bf.shape
    c = unet.config.out_channels
    depth = 2 ** (len(unet.config.block_out_channels) - 1)
    if h % depth or w % depth:
        raise VirtualStainError(f"image size {h}x{w} must be a multiple of {depth}; pad it first (see predict_image).")
    labels = _class_tensor(unet, classes, n, device)
    guide = None
    if guidance_scale:
        if classifier is None:
            raise VirtualStainError("guidance_scale > 0 needs a guidance classifier; train one or set it to 0.")
        target = classes if guidance_classes is None else guidance_classes
        if target is None or any(k is None for k in target):
            raise VirtualStainError("classifier guidance needs a class for every image (guidance_classes).")
        guide = torch.tensor([int(k) for k in target], dtype=torch.long, device=device)
        if int(guide.min()) < 0 or int(guide.max()) >= classifier.config.n_classes:
            raise VirtualStainError(f"guidance classes must be in 0..{classifier.config.n_classes - 1}.")
        classifier.to(device).eval()
    unet.to(device).eval()
    scheduler = make_scheduler(schedule, sampler)
    scheduler.set_timesteps(int(steps), device=device)
    gen = torch.Generator().manual_seed(int(seed))
    y = torch.randn((n, c, h, w), generator=gen).to(device)
    total = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        check(cancel, "sampling")
        out = unet(torch.cat([y, bf], 1), t, class_labels=labels).sample
        a_bar = scheduler.alphas_cumprod[int(t)].to(device)
        eps = out if prediction == "epsilon" else (y - torch.sqrt(a_bar) * out) / torch.sqrt(1.0 - a_bar)
        if guide is not None:
            eps = eps - guidance_scale * torch.sqrt(1.0 - a_bar) * guidance_gradient(classifier, y, int(t), guide)
        if sampler == "ddim":
            y = scheduler.step(eps, t, y, eta=eta, generator=gen).prev_sample
        else:
            y = scheduler.step(eps, t, y, generator=gen).prev_sample
        yield (i + 1, total, f"sampling step {i + 1}/{total}")
    return y.clamp(-1.5, 1.5).cpu().numpy()
