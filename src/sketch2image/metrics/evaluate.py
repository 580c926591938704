"""``evaluate``: one model, one held-out split, named metrics (``metrics/registry.py``) → a report.

Two generation passes, each only when a requested metric needs it:

- **mismatched**: every held-out sketch painted in the style of a *different* held-out image
  (a seeded derangement). FID/KID compare these outputs with the real held-out images; SR,
  Sty-Rec and Skt-Rec compare each output with its own style image / sketch.
- **paired**: every held-out sketch painted with its own image as style, compared with that
  image (perceptual distance, PSNR, SSIM, LPIPS).

The model runs in eval mode (the exported refiner is the EMA copy) under a fixed seed, so a
report is reproducible. Reference Inception features are cached (``metrics/reference.py``); the
report's JSON and markdown are ``metrics/report.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sketch2image import __version__
from sketch2image.errors import InputError
from sketch2image.metrics import functional as M
from sketch2image.metrics.reference import reference_features
from sketch2image.metrics.registry import DEFAULT_METRICS, REGISTRY, load_lpips, parse_metrics
from sketch2image.metrics.report import REPORT_FORMAT, machine_description


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


__all__ = ["DEFAULT_METRICS", "REGISTRY", "EvalContext", "derangement", "evaluate", "held_out_dirs", "load_held_out"]
