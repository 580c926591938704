"""The metric registry: every metric, per-sample or over the whole set, is one entry here.

``task`` says which generation pass a metric needs (``metrics/evaluate.py``): ``mismatched`` (each
sketch painted in another image's style) or ``paired`` (painted with its own image, compared with it).
Per batch, ``evaluate`` keeps per-sample rows only: a metric's own values (``per_sample``) and what
its ``collects`` names from ``COLLECTORS`` (e.g. Inception features). After the pass, ``reduce``
turns the gathered rows into the metric's report entry: FID and KID are set-level metrics of this
kind, the per-sample ones default to the mean and spread of their values. A new metric is a function
and a ``register`` call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sketch2image.errors import InputError, WeightsError
from sketch2image.metrics import functional as M
from sketch2image.options import DEFAULT_METRICS


def summary(values: torch.Tensor) -> dict:
    return {"value": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0, "n": len(values)}


@dataclass(frozen=True)
class Metric:
    """A registry entry: what a metric reads per batch, and how its report entry is made from all of it."""

    name: str
    task: str  # "mismatched" or "paired"
    better: str  # "lower" or "higher"
    description: str
    per_sample: Callable | None = None  # (ctx, out, sketch, style, target, third) -> (B,)
    collects: tuple[str, ...] = ()  # per-sample rows from COLLECTORS that `reduce` reads
    reduce: Callable | None = None  # (rows: name -> (N, ...) in held-out order, opts) -> the report entry
    third_image: bool = False  # needs a third held-out image per row (neither the sketch's own nor its style)

    def report(self, rows: dict[str, torch.Tensor], opts: dict) -> dict:
        """``opts``: seed, bootstrap (resamples for a spread, 0: none), reference_cached."""
        return self.reduce(rows, opts) if self.reduce is not None else summary(rows[self.name])


# Per-sample rows a set-level metric reads: (ctx, out, sketch, style, target) -> (B, ...). "inception_real"
# depends on the real images only, so ``evaluate`` takes it from the reference cache when it can.
COLLECTORS: dict[str, Callable] = {
    "inception_fake": lambda ctx, out, sketch, style, target: ctx.inception(out),
    "inception_real": lambda ctx, out, sketch, style, target: ctx.inception(target),
    # what TOM's redrawing of the *real* image scores on Skt-Rec: the floor to compare a model's with
    "sketch_floor": lambda ctx, out, sketch, style, target: M.sketch_distance(ctx.tom, target, sketch),
}


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name!r} registered twice")
    REGISTRY[metric.name] = metric
    return metric


def _sr(ctx, out, sketch, style, target, third=None):
    return M.style_relevance(ctx.vgg, out, style)


def _sty_rec(ctx, out, sketch, style, target, third=None):
    return M.style_vector_similarity(ctx.model.ae.style_encoder, out, style)


def _skt_rec(ctx, out, sketch, style, target, third=None):
    return M.sketch_distance(ctx.tom, out, sketch)


def _perceptual(ctx, out, sketch, style, target, third=None):
    return M.vgg_perceptual_distance(ctx.vgg, out, target)


def _psnr(ctx, out, sketch, style, target, third=None):
    return M.psnr(out, target)


def _ssim(ctx, out, sketch, style, target, third=None):
    return M.ssim(out, target)


def _style_follow(ctx, out, sketch, style, target, third=None):
    return M.style_follow(out, style, target)


def _content_leak(ctx, out, sketch, style, target, third=None):
    return M.content_leak(ctx.tom, out, style, third)


def _style_sensitivity(ctx, out, sketch, style, target, third=None):
    devices = [out.device] if out.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # refiner noise, if on, must not shift the other metrics' draws
        torch.manual_seed(0)
        other = ctx.model.decode(sketch, ctx.model.style_vectors(third), ctx.refine).to(out.device)
    return M.style_sensitivity(out, other)


def _lpips(ctx, out, sketch, style, target, third=None):
    return ctx.lpips(out * 2 - 1, target * 2 - 1)


def _mse(ctx, out, sketch, style, target, third=None):
    return (out - target).pow(2).flatten(1).mean(1)


def _counts(rows: dict, opts: dict) -> dict:
    return {"n_generated": len(rows["inception_fake"]), "n_reference": len(rows["inception_real"]),
            "reference_cached": opts["reference_cached"]}  # fmt: skip


def _fid(rows: dict, opts: dict) -> dict:
    real, fake = rows["inception_real"], rows["inception_fake"]
    out = {"value": M.fid_from_features(real, fake), **_counts(rows, opts)}
    if opts["bootstrap"]:
        out["bootstrap_std"] = M.bootstrap_spread(real, fake, M.fid_from_features, opts["bootstrap"], opts["seed"])
    return out


def _kid(rows: dict, opts: dict) -> dict:
    real, fake, seed = rows["inception_real"], rows["inception_fake"], opts["seed"]
    mean, std, subset = M.kid_from_features(real, fake, seed=seed)
    out = {"value": mean, "subset_size": subset, **_counts(rows, opts)}
    if subset < min(len(real), len(fake)):  # with one subset of everything a std means nothing
        out["std"] = std
    if opts["bootstrap"]:

        def kid(r, f):  # fewer subsets per resample: the resampling is the spread
            return M.kid_from_features(r, f, subsets=10, seed=seed)[0]

        out["bootstrap_std"] = M.bootstrap_spread(real, fake, kid, opts["bootstrap"], seed)
    return out


def _skt_rec_report(rows: dict, opts: dict) -> dict:
    return {**summary(rows["skt_rec"]), "real_images": rows["sketch_floor"].mean().item()}


for _m in [
    Metric(
        "fid",
        "mismatched",
        "lower",
        "Fréchet Inception distance, outputs vs real held-out images",
        collects=("inception_fake", "inception_real"),
        reduce=_fid,
    ),
    Metric(
        "kid",
        "mismatched",
        "lower",
        "kernel Inception distance (not ×1000), mean ± std over subsets of ≤ 1000",
        collects=("inception_fake", "inception_real"),
        reduce=_kid,
    ),
    Metric("sr", "mismatched", "higher", "style relevance: cosine of VGG relu1_2/relu2_2 channel mean & std", _sr),
    Metric("sty_rec", "mismatched", "higher", "cosine of E_style(style image) and E_style(output)", _sty_rec),
    Metric(
        "skt_rec",
        "mismatched",
        "lower",
        "mean absolute difference: input sketch vs TOM's sketch of the output",
        _skt_rec,
        collects=("sketch_floor",),
        reduce=_skt_rec_report,
    ),
    Metric(
        "style_follow",
        "mismatched",
        "lower",
        "colour mean/std distance of the output to the style image minus to the sketch's own image",
        _style_follow,
    ),
    Metric(
        "content_leak",
        "mismatched",
        "lower",
        "correlation of TOM(output) with TOM(style image) minus with TOM(an unrelated image)",
        _content_leak,
        third_image=True,
    ),
    Metric(
        "style_sensitivity",
        "mismatched",
        "higher",
        "mean |G(s, y_a) - G(s, y_b)|: how much the output changes between two styles",
        _style_sensitivity,
        third_image=True,
    ),
    Metric(
        "vgg_perceptual", "paired", "lower", "VGG-19 perceptual distance to the real image (not LPIPS)", _perceptual
    ),
    Metric("psnr", "paired", "higher", "PSNR (dB) of the reconstruction", _psnr),
    Metric("mse", "paired", "lower", "mean squared error of the reconstruction (pixels in [0, 1])", _mse),
    Metric("ssim", "paired", "higher", "SSIM of the reconstruction", _ssim),
    Metric("lpips", "paired", "lower", "LPIPS (AlexNet); needs torchvision's AlexNet weights on disk", _lpips),
]:
    register(_m)

assert all(c in COLLECTORS for m in REGISTRY.values() for c in m.collects), "a metric collects an unknown row"
assert set(DEFAULT_METRICS) <= set(REGISTRY), "options.DEFAULT_METRICS names an unregistered metric"


def parse_metrics(text: str | list[str] | tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        return list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise InputError(f"unknown metric(s) {unknown or names}; choose from {', '.join(REGISTRY)} (or 'all')")
    return list(dict.fromkeys(names))


def _lpips_backbone_file() -> Path:
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)


def load_lpips() -> torch.nn.Module:
    """torchmetrics' LPIPS, only when torchvision's AlexNet weights are already on disk (no download)."""
    file = _lpips_backbone_file()
    if not file.is_file():
        raise WeightsError(
            f"{file}: LPIPS needs torchvision's ImageNet AlexNet weights, which are not on this machine and are "
            "never downloaded at run time. Copy alexnet-owt-7be5be79.pth there (or set TORCH_HOME), "
            "or use the metric vgg_perceptual instead"
        )
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    lp = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="mean")
    net = lp.net

    def per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b).flatten()

    per_sample.net = net  # keep a reference for device moves
    return per_sample
