"""Loss terms and the feature statistics they are built from.

Kept apart from the networks so each term can be unit-tested against hand-computed values
and switched on or off from a config.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix (B, C, C) of a feature map (B, C, H, W), divided by H·W.

    Dividing by the number of positions makes the statistic independent of image size, so
    sketches rendered at different resolutions are judged on the same scale.
    """
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def mean_std(f: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and standard deviation (population variance + eps), (B, C, 1, 1)."""
    mean = f.mean(dim=(2, 3), keepdim=True)
    var = f.var(dim=(2, 3), keepdim=True, unbiased=False)
    return mean, (var + eps).sqrt()


def adain(content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor) -> torch.Tensor:
    """AdaIN target σ(s)·IN(c) + μ(s) (paper Eq. 4), given the style statistics."""
    c_mean, c_std = mean_std(content)
    return style_std * (content - c_mean) / c_std + style_mean


def d_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Discriminator loss. ``bce`` is the log loss of paper Eq. 5 on logits; ``hinge`` is Eq. 13."""
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_adv_loss(fake: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Generator's adversarial term: −log D(fake) (non-saturating, Eq. 6) or −D(fake) (hinge, Eq. 14)."""
    if kind == "bce":
        return F.softplus(-fake).mean()
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")
