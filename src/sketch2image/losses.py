"""Loss terms and the feature statistics they are built from.

Kept apart from the networks so each term can be unit-tested against hand-computed values
and switched on or off from a config.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix (B, C, C) of a feature map (B, C, H, W), divided by H·W.

    Dividing by the number of positions makes the statistic independent of image size, so
    sketches rendered at different resolutions are judged on the same scale.

    Always computed in float32, outside autocast: a Gram matrix rounded to bf16/fp16 is no longer
    positive semi-definite, and the discriminator takes logs of its quadratic forms (a bf16 Gram
    drove TOM to NaN at its first step).
    """
    b, c, h, w = f.shape
    with torch.autocast(f.device.type, enabled=False):
        flat = f.float().reshape(b, c, h * w)
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


def refiner_rec(fake: torch.Tensor, real: torch.Tensor, form: str = "rgb") -> torch.Tensor:
    """The reconstruction term of paper Eq. 14 for images in [0, 1]. ``rgb``: ‖·‖² of each pixel's colour in
    [−1, 1], averaged over pixels; ``mse``: the per-element mean on [0, 1] (a twelfth of it)."""
    diff = fake.float() - real.float()
    if form == "rgb":
        return (2 * diff).square().sum(dim=1).mean()
    if form == "mse":
        return diff.square().mean()
    raise ValueError(f"unknown reconstruction form {form!r}")


# --- self-supervised auto-encoder (paper §4.1) -------------------------------------------------


def style_triplet(f_t: torch.Tensor, f_org: torch.Tensor, f_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """``max(cos(f_t, f_neg) − cos(f_t, f_org) + α, 0)``: an augmented view's style is pulled to its own
    image's and pushed from another image's (the intent of paper Eq. 7, whose signs are swapped)."""
    pos = F.cosine_similarity(f_t, f_org, dim=1)
    neg = F.cosine_similarity(f_t, f_neg, dim=1)
    return F.relu(neg - pos + margin).mean()


def standardise(f: torch.Tensor) -> torch.Tensor:
    """Per-sample zero mean, unit variance, so a distance margin means the same at any feature scale."""
    flat = f.flatten(1)
    return (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-5)


def content_triplet(f_t: torch.Tensor, f_pos: torch.Tensor, f_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """``max(d(f_t, f_pos) − d(f_t, f_neg) + β, 0)`` with d the mean-squared distance of standardised maps
    (paper Eq. 10): sketches of one image close, a sketch of another image far."""
    a, p, n = standardise(f_t), standardise(f_pos), standardise(f_neg)
    return F.relu((a - p).pow(2).mean(1) - (a - n).pow(2).mean(1) + margin).mean()


def uniform_prediction_loss(logits: torch.Tensor) -> torch.Tensor:
    """``‖softmax(logits) − 1/k‖²`` (paper Eq. 9): the content must not predict the style class.

    Its size shrinks like 1/k: over k = 256 classes it is 1e-3 to 4e-5, invisible beside the other
    terms; ``uniform_kl`` is the default."""
    p = logits.softmax(dim=1)
    return (p - 1.0 / logits.shape[1]).pow(2).sum(1).mean()


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(logits) ‖ uniform) = log k − H(p)`` in nats: 0 when the content predicts nothing,
    up to log k when it names the class. The same units as the classification's cross-entropy, so one
    weight means the same for both at any k."""
    logp = logits.float().log_softmax(dim=1)
    return (logp.exp() * logp).sum(1).mean() + math.log(logits.shape[1])
