"""The metric registry and ``evaluate``: one model, one held-out split, named metrics → a report.

Two generation passes, each only when a requested metric needs it:

- **mismatched**: every held-out sketch painted in the style of a *different* held-out image
  (a seeded derangement). FID/KID compare these outputs with the real held-out images; SR,
  Sty-Rec and Skt-Rec compare each output with its own style image / sketch.
- **paired**: every held-out sketch painted with its own image as style, compared with that
  image (perceptual distance, PSNR, SSIM, LPIPS).

The model runs in eval mode (the exported refiner is the EMA copy) under a fixed seed, so a
report is reproducible. Reference Inception features are cached on disk keyed by the sha256
of the reference pixels, the image size, and the extractor's own checksum, never by a name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sketch2image import __version__
from sketch2image.errors import InputError, WeightsError
from sketch2image.metrics import functional as M

REPORT_FORMAT = "sketch2image.eval/1"


@dataclass(frozen=True)
class Metric:
    """A registry entry. ``per_sample`` metrics map one batch to one value per sample."""

    name: str
    task: str  # "mismatched" or "paired"
    better: str  # "lower" or "higher"
    description: str
    per_sample: Callable | None = None  # (ctx, out, sketch, style, target) -> (B,)


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name!r} registered twice")
    REGISTRY[metric.name] = metric
    return metric


def _sr(ctx, out, sketch, style, target):
    return M.style_relevance(ctx.vgg, out, style)


def _sty_rec(ctx, out, sketch, style, target):
    return M.style_vector_similarity(ctx.model.ae.style_encoder, out, style)


def _skt_rec(ctx, out, sketch, style, target):
    return M.sketch_distance(ctx.tom, out, sketch)


def _perceptual(ctx, out, sketch, style, target):
    return M.vgg_perceptual_distance(ctx.vgg, out, target)


def _psnr(ctx, out, sketch, style, target):
    return M.psnr(out, target)


def _ssim(ctx, out, sketch, style, target):
    return M.ssim(out, target)


def _lpips(ctx, out, sketch, style, target):
    return ctx.lpips(out * 2 - 1, target * 2 - 1)


for _m in [
    Metric("fid", "mismatched", "lower", "Fréchet Inception distance, outputs vs real held-out images"),
    Metric("kid", "mismatched", "lower", "kernel Inception distance (not ×1000), mean ± std over subsets of ≤ 1000"),
    Metric("sr", "mismatched", "higher", "style relevance: cosine of VGG relu1_2/relu2_2 channel mean & std", _sr),
    Metric("sty_rec", "mismatched", "higher", "cosine of E_style(style image) and E_style(output)", _sty_rec),
    Metric(
        "skt_rec",
        "mismatched",
        "lower",
        "mean absolute difference: input sketch vs TOM's sketch of the output",
        _skt_rec,
    ),  # fmt: skip
    Metric(
        "vgg_perceptual", "paired", "lower", "VGG-19 perceptual distance to the real image (not LPIPS)", _perceptual
    ),
    Metric("psnr", "paired", "higher", "PSNR (dB) of the reconstruction", _psnr),
    Metric("ssim", "paired", "higher", "SSIM of the reconstruction", _ssim),
    Metric("lpips", "paired", "lower", "LPIPS (AlexNet); needs torchvision's AlexNet weights on disk", _lpips),
]:
    register(_m)

DEFAULT_METRICS = ("fid", "kid", "sr", "sty_rec", "skt_rec", "vgg_perceptual", "psnr", "ssim")


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


@lru_cache(maxsize=2)
def _shared_vgg(device: str):
    """Frozen networks are loaded once per process: an ablation evaluates many checkpoints."""
    from sketch2image.nets.vgg import load_vgg

    return load_vgg("normalised").to(device)


@lru_cache(maxsize=2)
def _shared_inception(path: str | None, device: str):
    from sketch2image.metrics.inception import FIDInception

    return FIDInception(path).to(device)


@dataclass
class EvalContext:
    """Shared networks, loaded once and only when a requested metric needs them."""

    model: object  # Sketch2Image
    device: torch.device
    inception_path: str | None = None
    _cache: dict = field(default_factory=dict)

    def _get(self, key: str, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def vgg(self):
        return _shared_vgg(str(self.device))

    @property
    def inception(self):
        return _shared_inception(self.inception_path, str(self.device))

    @property
    def tom(self):
        if self.model.tom is None:
            raise InputError(
                "skt_rec needs TOM snapshots: export the model with `s2i export --tom RUN` or pass --tom RUN"
            )
        return self.model.tom

    @property
    def lpips(self):
        return self._get("lpips", load_lpips)


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation with no fixed point: every sketch gets another image's style."""
    if n < 2:
        raise InputError(f"mismatched styles need at least 2 held-out images, got {n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    # Rotate by a random non-zero offset inside the shuffled order: a single cycle, no fixed points.
    offset = int(torch.randint(1, n, (1,), generator=g))
    out = torch.empty(n, dtype=torch.long)
    out[perm] = perm.roll(-offset)
    return out


def _default_cache_dir() -> Path:
    env = os.environ.get("S2I_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sketch2image"


def _features(ctx: EvalContext, images: torch.Tensor, batch_size: int, desc: str, progress: bool) -> torch.Tensor:
    rows = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        rows.append(ctx.inception(images[i : i + batch_size].to(ctx.device)).cpu())
    return torch.cat(rows)


def reference_features(
    ctx: EvalContext, images: torch.Tensor, batch_size: int, cache_dir: Path | None, progress: bool
) -> tuple[torch.Tensor, bool]:
    """Inception features of the real images, cached by content hash. Returns (features, from cache)."""
    from sketch2image.metrics.inception import PREPROCESS
    from sketch2image.train.checkpoint import atomic_save_safetensors, load_safetensors, safetensors_metadata

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(pixels.shape), "extractor": ctx.inception.sha256, "prep": PREPROCESS}).encode())
    h.update(pixels.numpy().tobytes())
    key = h.hexdigest()
    file = (cache_dir or _default_cache_dir()) / "fid_reference" / f"{key}.safetensors"
    if file.is_file():
        try:
            if safetensors_metadata(file).get("key") == key:
                return load_safetensors(file)["features"], True
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            pass
    feats = _features(ctx, images, batch_size, "Inception (reference)", progress)
    try:
        atomic_save_safetensors({"features": feats.contiguous()}, file, {"key": key, "n": str(len(feats))})
    except OSError:
        pass  # a read-only cache only costs time
    return feats, False


def _summary(values: torch.Tensor) -> dict:
    return {"value": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0, "n": len(values)}


def evaluate(
    model,
    images: torch.Tensor,
    sketches: torch.Tensor,
    metrics: list[str] | tuple[str, ...] = DEFAULT_METRICS,
    *,
    refine: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    inception_path: str | None = None,
    progress: bool = True,
    bootstrap: int = 0,
) -> dict:
    """All requested metrics of ``model`` on held-out (images, sketches) matched by position.

    ``images`` (N, 3, S, S) and ``sketches`` (N, 1, S, S), in [0, 1]; returns a report dict.
    ``bootstrap`` > 0 adds ``bootstrap_std`` to FID and KID: their spread over that many resamples of
    the held-out set.
    """
    names = parse_metrics(list(metrics))
    if len(images) != len(sketches):
        raise InputError(f"{len(images)} images but {len(sketches)} sketches")
    ctx = EvalContext(model, model.device, inception_path)
    chosen = [REGISTRY[n] for n in names]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for task in ("mismatched", "paired"):
            todo = [m for m in chosen if m.task == task]
            if not todo:
                continue
            style_index = derangement(len(images), seed) if task == "mismatched" else torch.arange(len(images))
            per_sample = {m.name: [] for m in todo if m.per_sample is not None}
            fake_feats = []
            want_inception = any(m.name in ("fid", "kid") for m in todo)
            for i in tqdm(range(0, len(images), batch_size), desc=f"evaluating ({task})", disable=not progress):
                idx = torch.arange(i, min(i + batch_size, len(images)))
                sk = sketches[idx].to(ctx.device)
                style = images[style_index[idx]].to(ctx.device)
                target = images[idx].to(ctx.device)
                out = model.decode(sk, model.style_vectors(style), refine).to(ctx.device)
                with torch.inference_mode():
                    for m in todo:
                        if m.per_sample is not None:
                            per_sample[m.name].append(m.per_sample(ctx, out, sk, style, target).float().cpu())
                    if want_inception:
                        fake_feats.append(ctx.inception(out).cpu())
            for name, vals in per_sample.items():
                results[name] = _summary(torch.cat(vals))
            if want_inception:
                fake = torch.cat(fake_feats)
                real, cached = reference_features(ctx, images, batch_size, cache_dir, progress)
                counts = {"n_generated": len(fake), "n_reference": len(real), "reference_cached": cached}
                if "fid" in names:
                    results["fid"] = {"value": M.fid_from_features(real, fake), **counts}
                    if bootstrap:
                        results["fid"]["bootstrap_std"] = M.bootstrap_spread(real, fake, M.fid_from_features,
                                                                             bootstrap, seed)  # fmt: skip
                if "kid" in names:
                    mean, std, size = M.kid_from_features(real, fake, seed=seed)
                    results["kid"] = {"value": mean, "subset_size": size, **counts}
                    if size < min(len(real), len(fake)):  # with one subset of everything a std means nothing
                        results["kid"]["std"] = std
                    if bootstrap:

                        def kid(r, f):  # noqa: E306 - fewer subsets per resample: the resampling is the spread
                            return M.kid_from_features(r, f, subsets=10, seed=seed)[0]

                        results["kid"]["bootstrap_std"] = M.bootstrap_spread(real, fake, kid, bootstrap, seed)
    if "skt_rec" in results:  # what TOM's redrawing of the *real* image scores: the floor to compare with
        with torch.inference_mode():
            ref = torch.cat(
                [
                    M.sketch_distance(
                        ctx.tom, images[i : i + batch_size].to(ctx.device), sketches[i : i + batch_size].to(ctx.device)
                    )
                    .float()
                    .cpu()
                    for i in range(0, len(images), batch_size)
                ]
            )
        results["skt_rec"]["real_images"] = ref.mean().item()
    for name in names:
        m = REGISTRY[name]
        results[name] = {**results[name], "better": m.better, "task": m.task, "description": m.description}
    return {
        "format": REPORT_FORMAT,
        "version": __version__,
        "metrics": {n: results[n] for n in names},
        "n_test": len(images),
        "size": int(images.shape[-1]),
        "refine": bool(refine and getattr(model, "refiner", None) is not None),
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_description(),
    }


def held_out_dirs(data: str | os.PathLike) -> tuple[Path, Path]:
    """The (images, sketches) folders of a data folder's held-out split.

    Understands a rendered OpenMoji folder (``images/test`` + the artists' ``lines/test``) and any
    folder with ``images/`` and ``sketches/`` side by side (files paired by relative name).
    """
    root = Path(data)
    for images, sketches in (("images/test", "lines/test"), ("images/test", "sketches/test"), ("images", "sketches")):
        if (root / images).is_dir() and (root / sketches).is_dir():
            return root / images, root / sketches
    raise InputError(
        f"{root}: no held-out split found; expected images/test + lines/test (from `s2i data openmoji`) or "
        "images/ + sketches/ with matching file names (or pass --images and --sketches)"
    )


def load_held_out(
    images: Path, sketches: Path, size: int, limit: int | None = None
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    from sketch2image.data.paired import load_pairs_by_id

    ids, x, s = load_pairs_by_id(Path(images), Path(sketches), size, strict=True)
    if limit is not None:
        ids, x, s = ids[:limit], x[:limit], s[:limit]
    return ids, x, s


def machine_description() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def report_markdown(report: dict, title: str = "Evaluation") -> str:
    lines = [
        f"## {title}",
        "",
        f"{report['n_test']} held-out images at {report['size']} px, seed {report['seed']}, "
        f"{'refined (EMA refiner)' if report['refine'] else 'auto-encoder output'}.",
        "",
        "| metric | value | better | samples | what it measures |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["metrics"].items():
        value = _fmt(r["value"]) + (f" ± {_fmt(r['std'])}" if "std" in r else "")
        n = f"{r['n_generated']} gen / {r['n_reference']} real" if "n_generated" in r else str(r.get("n", ""))
        extra = f" (real images: {_fmt(r['real_images'])})" if "real_images" in r else ""
        lines.append(f"| {name} | {value}{extra} | {r['better']} | {n} | {r['description']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: Path, md_path: Path | None = None, title: str = "Evaluation") -> None:
    from sketch2image.train.checkpoint import atomic_write_json, atomic_write_text

    atomic_write_json(Path(json_path), report)
    if md_path is not None:
        atomic_write_text(Path(md_path), report_markdown(report, title))


__all__ = [
    "DEFAULT_METRICS",
    "REGISTRY",
    "Metric",
    "derangement",
    "evaluate",
    "parse_metrics",
    "register",
    "report_markdown",
    "write_report",
]
