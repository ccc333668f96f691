"""Train a VAE, a skip-connection VAE or an InfoMax VAE on cell crops
(``gradcamo train --objective vae|sc-vae|infomax-vae``).

Same data path as the classifier (:mod:`.loop`): wells split into train/validation, per-channel
normalisation fitted on the training wells, the same augmentation, AdamW + one-cycle LR. No labels are
used for the weights; the class of each crop is only used to stratify the split by well.

Objective per crop (normalised crops): ``‖x − x̂‖² + β·KL(q(z|x) ‖ N(0, I)) − γ·I_α(x; z)``, where
``I_α`` is the interpolated mutual-information bound of :func:`~napari_gradcamo.models.vae.interpolated_mi_bound`
estimated by a critic trained jointly (γ = ``mi_weight``; 0 for the plain VAE and the SC-VAE, whose
difference from the plain VAE is the network: shortcuts in every encoder and decoder layer, see
:mod:`napari_gradcamo.models.vae`). The checkpoint keeps the
epoch with the lowest validation loss (reconstruction + β·KL; the MI term is a training aid).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_gradcamo.crops.datasets import CropSet
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report

#: the MI critic's peak learning rate relative to the VAE's
CRITIC_LR_FACTOR = 5.0


#: the self-supervised objectives ``gradcamo train --objective`` accepts besides ``classifier``
OBJECTIVES = ("vae", "sc-vae", "infomax-vae")


@dataclass
class VaeConfig:
    """What ``gradcamo train --objective vae|sc-vae|infomax-vae`` needs besides the data (stored in the checkpoint)."""

    objective: str = "vae"  # or "sc-vae" (skip-connection VAE), "infomax-vae"
    encoder: str = "small-cnn"  # or efficientnet-b0..b2
    width: int = 8
    latent_dim: int = 16
    beta: float = 1.0
    mi_weight: float = 0.0  # γ; the default for infomax-vae is set by :meth:`validate`
    mi_alpha: float = 0.5
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    jitter: float = 0.1
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} here, got {self.objective!r}.")
        if self.objective == "infomax-vae" and self.mi_weight <= 0:
            self.mi_weight = 1.0
        if self.objective != "infomax-vae" and self.mi_weight > 0:
            raise ValueError("--mi-weight > 0 needs --objective infomax-vae.")
        if self.objective == "sc-vae" and self.encoder != "small-cnn":
            raise ValueError(f"--objective sc-vae builds its skip connections into the small CNN encoder, not "
                             f"'{self.encoder}'; use --arch small-cnn-3d.")
        if self.latent_dim < 2 or self.beta < 0 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError("Need latent_dim ≥ 2, β ≥ 0, epochs ≥ 1 and batch_size ≥ 2.")
        if not 0 <= self.mi_alpha <= 1:
            raise ValueError("--mi-alpha must lie in [0, 1].")


@dataclass
class VaeHistory:
    loss: list[float] = field(default_factory=list)
    reconstruction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    mutual_information: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class VaeResult:
    model: object
    metadata: object  # ModelMetadata
    history: VaeHistory
    split: dict
    best_epoch: int
    checkpoint: Path | None = None


def latent_names(latent_dim: int) -> list[str]:
    """The checkpoint's ``class_names`` for a VAE: one name per latent unit (z00, z01, ...)."""
    width = max(2, len(str(latent_dim - 1)))
    return [f"z{k:0{width}d}" for k in range(latent_dim)]


def _batches(order: np.ndarray, batch_size: int):
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) >= 2:  # batch norm and the in-batch MI bound need two crops
            yield np.sort(idx)


def vae_validation_loss(model, data: CropSet, rows, normalization: dict, beta: float, device, batch_size: int = 32):
    """Mean per-crop reconstruction + β·KL on ``rows`` with z = the latent mean (deterministic)."""
    import torch

    from napari_gradcamo.models.checkpoint import normalize_crops
    from napari_gradcamo.models.vae import vae_losses

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = np.asarray(rows[start : start + batch_size])
            x = torch.as_tensor(normalize_crops(np.asarray(data.x[idx]), normalization), device=device)
            recon, mu, logvar, _ = model.reconstruct(x, sample=False)
            r, kl = vae_losses(x, recon, mu, logvar)
            total += float((r + beta * kl).sum())
            n += len(idx)
    return total / max(n, 1)


def fit_vae(data: CropSet, dataset_classes: Sequence[str], channel_names: Sequence[str], crop_shape: Sequence[int],
            config: VaeConfig, out_dir: str | Path | None = None, *, extra_metadata: dict | None = None,
            progress: ProgressCallback | None = None, epoch_end=None, cancel: CancelToken | None = None) -> VaeResult:
    """Train a (InfoMax) VAE on ``data``; with ``out_dir`` write ``model.safetensors`` and ``history.csv``."""
    import torch

    from napari_gradcamo.audit.cam import pick_device
    from napari_gradcamo.models.architectures import VAE, build_model
    from napari_gradcamo.models.checkpoint import normalize_crops, save_checkpoint
    from napari_gradcamo.models.metadata import ModelMetadata
    from napari_gradcamo.models.vae import MutualInfoCritic, interpolated_mi_bound, vae_losses
    from napari_gradcamo.train.data import augment, fit_normalization_rows, split_by_group
    from napari_gradcamo.train.fit import BEST_FILE, environment
    from napari_gradcamo.train.loop import count_steps

    config.validate()
    device = pick_device(config.device)
    split = split_by_group(data.groups, data.y, config.val_fraction, 0.0, config.seed)
    if len(split["train"]) < 2:
        raise ValueError("Fewer than two training crops after the split by well; add wells or lower --val-fraction.")
    normalization = fit_normalization_rows(data.x, split["train"])
    kwargs = {"encoder": config.encoder, "width": config.width}
    if config.objective == "sc-vae":
        kwargs["skip_connections"] = True
    meta = ModelMetadata(VAE, latent_names(config.latent_dim), list(channel_names), [int(s) for s in crop_shape],
                         architecture_kwargs=kwargs, normalization=normalization,
                         target_layer="encoder.stage1" if config.encoder == "small-cnn" else None)
    torch.manual_seed(config.seed)
    model = build_model(meta).to(device)
    critic = MutualInfoCritic(len(channel_names), config.latent_dim).to(device) if config.mi_weight > 0 else None
    steps = count_steps(len(split["train"]), config.batch_size)
    groups = [{"params": list(model.parameters()), "lr": config.lr}]
    if critic is not None:  # the critic starts near I = 0 and needs a faster start than the VAE
        groups.append({"params": list(critic.parameters()), "lr": CRITIC_LR_FACTOR * config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                   total_steps=max(config.epochs * steps, 1))
    rng = np.random.default_rng(config.seed)
    history = VaeHistory()
    best = {"epoch": -1, "loss": math.inf, "state": None}
    for epoch in range(config.epochs):
        started = time.perf_counter()
        model.train()
        sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "mutual_information": 0.0}
        n = 0
        order = split["train"][rng.permutation(len(split["train"]))]
        for b, idx in enumerate(_batches(order, config.batch_size)):
            check(cancel, "training")
            x = torch.as_tensor(augment(normalize_crops(np.asarray(data.x[idx]), normalization), rng, config.jitter),
                                device=device)
            recon, mu, logvar, z = model.reconstruct(x)
            r, kl = vae_losses(x, recon, mu, logvar)
            loss = (r + config.beta * kl).mean()
            mi = torch.zeros(())
            if critic is not None:
                mi = interpolated_mi_bound(critic(x, z), config.mi_alpha)
                loss = loss - config.mi_weight * mi
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            for key, value in (("loss", loss), ("reconstruction", r.mean()), ("kl", kl.mean()),
                               ("mutual_information", mi)):
                sums[key] += float(value.detach()) * len(idx)
            n += len(idx)
            report(progress, epoch * steps + b + 1, config.epochs * steps,
                   f"epoch {epoch + 1}/{config.epochs} loss {sums['loss'] / n:.1f}")
        for key, total in sums.items():
            getattr(history, key).append(total / max(n, 1))
        history.seconds.append(time.perf_counter() - started)
        rows = split["val"] if len(split["val"]) else split["train"]
        val = vae_validation_loss(model, data, rows, normalization, config.beta, device)
        history.val_loss.append(val)
        if val < best["loss"]:
            best = {"epoch": epoch, "loss": val,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        if epoch_end is not None:
            epoch_end(epoch + 1, {key: getattr(history, key)[-1] for key in asdict(history)})
    model.load_state_dict(best["state"])
    model.eval()
    meta.training = {
        "config": asdict(config), "objective": config.objective, "class_names": list(dataset_classes),
        "crops": {name: int(len(rows)) for name, rows in split.items()},
        "split_wells": {name: sorted(set(np.asarray(data.groups)[rows].astype(str).tolist()))
                        for name, rows in split.items()},
        "history": asdict(history), "best_epoch": best["epoch"] + 1, "device": str(device),
        **environment(), **(extra_metadata or {}),
    }
    checkpoint = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (BEST_FILE + ".tmp.safetensors")
        save_checkpoint(tmp, model.cpu(), meta)
        checkpoint = tmp.replace(out / BEST_FILE)
        _write_history(out / "history.csv", history)
    return VaeResult(model.cpu(), meta, history, split, best["epoch"] + 1, checkpoint)


def _write_history(path: Path, history: VaeHistory) -> None:
    import pandas as pd

    table = pd.DataFrame(asdict(history))
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    tmp = path.with_suffix(".tmp.csv")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
