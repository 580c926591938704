"""The measures themselves, as plain functions of tensors (images in [0, 1]).

FID and KID are torchmetrics' implementations, fed with features we extract ourselves so
that reference features can be cached and the same code serves any feature extractor.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from sketch2image.losses import mean_std
from sketch2image.nets.vgg import VGGEncoder

SR_LAYERS = ("relu1_2", "relu2_2")
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_1")


class _Features(nn.Module):
    """Hands pre-computed feature rows to torchmetrics unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check_features(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID/KID need at least 2 samples per set, got {len(real)} real and {len(fake)} generated")


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_features(real, fake)
    # sync_on_compute off: the features given are already everything (under torchrun, torchmetrics would
    # otherwise all-gather them again from every process and count each sample once per process).
    metric = FrechetInceptionDistance(feature=_Features(real.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float, int]:
    """Kernel Inception Distance (mean, std over subsets, subset size used).

    The subset size is capped at the smaller set, so small held-out splits still get a number.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_features(real, fake)
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")  # we pass features, not images
        metric = KernelInceptionDistance(feature=_Features(real.shape[1]), subsets=subsets, subset_size=size,
                                         sync_on_compute=False)  # fmt: skip
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the subsets are drawn from the global RNG
        mean, std = metric.compute()
    return float(mean), float(std), size


def bootstrap_spread(real: torch.Tensor, fake: torch.Tensor, fn, n: int = 20, seed: int = 0) -> float:
    """Standard deviation of ``fn(real[i], fake[i])`` over ``n`` resamples (with replacement) of the
    held-out set: how much a distance computed on these few hundred images could move by chance.

    ``real`` and ``fake`` are indexed alike (row i is held-out image i and the output made for it).
    """
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n):
        idx = torch.randint(len(real), (len(real),), generator=g)
        values.append(fn(real[idx], fake[idx]))
    return float(torch.tensor(values).std())


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)


def style_relevance(vgg: VGGEncoder, output: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """SR per sample: cosine of channel means and of channel stds of low-level VGG features,
    output vs style image, averaged over the two statistics and over relu1_2 and relu2_2."""
    fo, fs = vgg(output, SR_LAYERS), vgg(style, SR_LAYERS)
    scores = []
    for layer in SR_LAYERS:
        (mo, so), (ms, ss) = mean_std(fo[layer]), mean_std(fs[layer])
        scores.append(0.5 * (_cos(mo, ms) + _cos(so, ss)))
    return torch.stack(scores).mean(0)


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


def vgg_perceptual_distance(vgg: VGGEncoder, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """An LPIPS-shaped distance on VGG-19 features with equal (not learnt) layer weights.

    Per layer: unit-normalise each position's channel vector, squared difference summed over
    channels, averaged over positions; then averaged over layers. 0 for identical images.
    This is *not* LPIPS and is never reported under that name.
    """
    fa, fb = vgg(a, PERCEPTUAL_LAYERS), vgg(b, PERCEPTUAL_LAYERS)
    per_layer = [(_unit(fa[k]) - _unit(fb[k])).pow(2).sum(1).mean((1, 2)) for k in PERCEPTUAL_LAYERS]
    return torch.stack(per_layer).mean(0)


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR in dB for images in [0, 1] (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(output, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM (Gaussian window 11, σ 1.5; torchmetrics)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(output, target, data_range=1.0, reduction="none")


def style_vector_similarity(style_encoder: nn.Module, output: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Sty-Rec per sample: cosine between E_style(style image) and E_style(output)."""
    return _cos(style_encoder(output), style_encoder(style))


def sketch_distance(sketcher: nn.Module, output: torch.Tensor, sketch: torch.Tensor, snapshot: int = 0) -> torch.Tensor:
    """Skt-Rec per sample: mean absolute difference between the input sketch and TOM's sketch of
    the output (both grey in [0, 1])."""
    redrawn = sketcher(output, snapshot=snapshot)
    return (redrawn - sketch).abs().mean((1, 2, 3))


def colour_stats(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean and standard deviation of each RGB channel, (B, 6): the palette, not the layout."""
    flat = x.float().flatten(2)
    return torch.cat([flat.mean(2), flat.std(2, unbiased=False)], 1)


def style_follow(output: torch.Tensor, style: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Per sample: colour-statistics distance of the output to the style image minus its distance to the
    sketch's own image. Negative: the output took the style image's palette; positive: it kept the palette
    of the image the sketch was drawn from (which the model never saw)."""
    o = colour_stats(output)
    return (o - colour_stats(style)).norm(dim=1) - (o - colour_stats(own)).norm(dim=1)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).float(), b.flatten(1).float()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)


def content_leak(sketcher: nn.Module, output: torch.Tensor, style: torch.Tensor, third: torch.Tensor) -> torch.Tensor:
    """Per sample: correlation of TOM's sketch of the output with TOM's sketch of the style image, minus with
    that of an unrelated third image. Above 0: the style image's edges show through (the paper's Fig. 10-11
    "shadow"); the third image removes the correlation any two images of the set share (aligned faces)."""
    drawn, of_style, of_third = (sketcher(x, snapshot=0) for x in (output, style, third))
    return _pearson(drawn, of_style) - _pearson(drawn, of_third)


def style_sensitivity(output_a: torch.Tensor, output_b: torch.Tensor) -> torch.Tensor:
    """Per sample: mean |G(s, y_a) − G(s, y_b)| of one sketch under two styles; 0 for a model that ignores
    the style input."""
    return (output_a.float() - output_b.float()).abs().mean((1, 2, 3))


__all__ = [
    "PERCEPTUAL_LAYERS",
    "SR_LAYERS",
    "colour_stats",
    "content_leak",
    "style_follow",
    "style_sensitivity",
    "fid_from_features",
    "kid_from_features",
    "psnr",
    "sketch_distance",
    "ssim",
    "style_relevance",
    "style_vector_similarity",
    "vgg_perceptual_distance",
]
