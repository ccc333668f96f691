"""What a classifier's outputs mean: softmax over K classes, one sigmoid logit (binary), or K sigmoids.

* ``softmax`` — K logits; probabilities are their softmax; class k is explained by logit k.
* ``sigmoid-binary`` — one logit z for two classes (negative, positive): P(positive) = σ(z); the
  positive class is explained by +z, the negative class by −z (so neither map is zero by construction).
* ``multilabel`` — K independent sigmoid logits; each probability is σ(z_k) (they need not sum to 1);
  the predicted class is the most probable label; class k is explained by z_k.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

HEADS = ("softmax", "sigmoid-binary", "multilabel")


def check_head(head: str, n_classes: int) -> str:
    """``head`` if it fits ``n_classes``; else a ValueError naming the fix."""
    if head not in HEADS:
        raise ValueError(f"Unknown head '{head}'; use one of {', '.join(HEADS)}.")
    if head == "sigmoid-binary" and n_classes != 2:
        raise ValueError(f"A 'sigmoid-binary' head explains exactly two classes (negative, positive), not {n_classes}.")
    return head


def output_count(head: str, n_classes: int) -> int:
    """How many outputs the network's last layer has for ``n_classes`` classes."""
    return 1 if head == "sigmoid-binary" else int(n_classes)


def probabilities(head: str, logits) -> np.ndarray:
    """(B, K) class probabilities (a torch tensor of logits in, numpy out) as the model means them."""
    import torch

    z = logits.detach().float()
    if head == "sigmoid-binary":
        p = torch.sigmoid(z.reshape(len(z), -1)[:, :1])
        return torch.cat([1.0 - p, p], dim=1).cpu().numpy()
    if head == "multilabel":
        return torch.sigmoid(z).cpu().numpy()
    return torch.softmax(z, dim=1).cpu().numpy()


class ClassOutput:
    """The scalar Grad-CAM differentiates for one sample: logit k (softmax, multilabel) or ±z (binary).

    Called on one sample's output row, as pytorch-grad-cam's targets are.
    """

    def __init__(self, head: str, index: int):
        self.head, self.index = head, int(index)

    def __call__(self, output):
        if self.head == "sigmoid-binary":
            z = output.reshape(-1)[0]
            return z if self.index == 1 else -z
        return output[..., self.index]


def class_logits(head: str, logits):
    """(B, K) torch tensor: the scalar each class is explained by, per sample (``[-z, z]`` for a
    sigmoid-binary head, the logits themselves otherwise)."""
    import torch

    if head == "sigmoid-binary":
        z = logits.reshape(len(logits), -1)[:, :1]
        return torch.cat([-z, z], dim=1)
    return logits


def explained(head: str, logits, targets):
    """(B,) torch tensor: the scalar Grad-CAM differentiates for each sample's ``targets`` class."""
    import torch

    index = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=logits.device).reshape(-1, 1)
    return class_logits(head, logits).gather(1, index)[:, 0]


def chosen_targets(probs: np.ndarray, targets: Sequence[int | None] | None) -> np.ndarray:
    """The class each sample is explained for: ``targets[i]`` where given, else its most probable class."""
    predicted = np.asarray(probs).argmax(1)
    chosen = list(targets) if targets is not None else [None] * len(predicted)
    return np.array([int(p) if c is None else int(c) for p, c in zip(predicted, chosen)], dtype=np.int64)


def targets_for(head: str, indices: Sequence[int]) -> list[ClassOutput]:
    return [ClassOutput(head, i) for i in indices]


def loss(head: str, logits, target, class_weights=None, reduction: str = "mean"):
    """Training loss for ``target`` class indices: cross-entropy, or binary cross-entropy for sigmoid heads."""
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    if head == "softmax":
        return F.cross_entropy(logits, target, weight=class_weights, reduction=reduction)
    if head == "sigmoid-binary":
        per = F.binary_cross_entropy_with_logits(logits.reshape(len(logits), -1)[:, 0], target.float(), reduction="none")
    else:
        onehot = torch.nn.functional.one_hot(target.long(), logits.shape[1]).float()
        per = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(dim=1)
    w = torch.ones_like(per) if class_weights is None else class_weights[target]
    if reduction == "none":
        return per * w
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def predicted(head: str, logits):
    """Predicted class index per sample (a torch tensor)."""
    if head == "sigmoid-binary":
        return (logits.reshape(len(logits), -1)[:, 0] > 0).long()
    return logits.argmax(1)
