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

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sketch2image.data.images import ImageFolder, load_uint8, to_grey
from sketch2image.errors import InputError
from sketch2image.metrics.reference import load_reference, reference_key, store_reference
from sketch2image.metrics.registry import COLLECTORS, DEFAULT_METRICS, REGISTRY, load_lpips, parse_metrics
from sketch2image.metrics.report import machine_description
from sketch2image.parallel import gather
from sketch2image.parallel import world as parallel_world
from sketch2image.storage import EVAL_REPORT_FORMAT
from sketch2image.version import __version__


@lru_cache(maxsize=2)
def _shared_vgg(device: str):
    """Frozen networks are loaded once per process: an ablation evaluates many checkpoints."""
    from sketch2image.nets.vgg import load_vgg

    return load_vgg("normalised").to(device)


@lru_cache(maxsize=2)
def _shared_inception(path: str | None, device: str):
    from sketch2image.metrics.inception import FIDInception

    return FIDInception(path).to(device)


REFERENCE = "inception_real"  # the collected rows that are cached between evaluations


@dataclass
class EvalContext:
    """Shared networks, loaded once and only when a requested metric needs them."""

    model: object  # Sketch2Image
    device: torch.device
    inception_path: str | None = None
    refine: bool = True  # the generation setting of the run, for metrics that generate again
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
                "skt_rec and content_leak need TOM snapshots: export the model with `s2i export --tom RUN` or pass "
                "--tom RUN"
            )
        return self.model.tom

    @property
    def lpips(self):
        return self._get("lpips", load_lpips)


def _shuffle(n: int, seed: int) -> tuple[torch.Tensor, int]:
    """A seeded order of the n images and a random offset in 1..n-1, from one generator."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    return perm, int(torch.randint(1, n, (1,), generator=g))


def _read_on(perm: torch.Tensor, offset: int) -> torch.Tensor:
    """``out[perm[i]] = perm[i + offset]`` (mod n): no fixed point for 0 < offset < n."""
    out = torch.empty(len(perm), dtype=torch.long)
    out[perm] = perm.roll(-offset)
    return out


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation with no fixed point: every sketch gets another image's style."""
    if n < 2:
        raise InputError(f"mismatched styles need at least 2 held-out images, got {n}")
    return _read_on(*_shuffle(n, seed))


def third_images(n: int, seed: int) -> torch.Tensor:
    """For row i an image that is neither i nor its style image ``derangement(n, seed)[i]``: the same shuffle
    read at another offset (content leak's unrelated image, style sensitivity's second style)."""
    if n < 3:
        raise InputError(f"content_leak and style_sensitivity need at least 3 held-out images, got {n}")
    perm, offset = _shuffle(n, seed)
    return _read_on(perm, offset % (n - 1) + 1)  # in 1..n-1 and never equal to offset


class TensorPairs(Dataset):
    """Held-out pairs already in memory: images (N, 3, S, S) and grey sketches (N, 1, S, S) in [0, 1]."""

    def __init__(self, images: torch.Tensor, sketches: torch.Tensor) -> None:
        if len(images) != len(sketches):
            raise InputError(f"{len(images)} images but {len(sketches)} sketches")
        self.images, self.sketches = images, sketches

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        i, j, m = key
        item = {"index": i, "image": self.images[i]}
        if j >= 0:
            item.update(sketch=self.sketches[i], style=self.images[j], third=self.images[m])
        return item


class HeldOutPairs(Dataset):
    """Held-out images and their sketches from two folders, matched by file id, decoded on demand.

    Only the folder listings are read up front (``limit`` applies to them), so memory does not grow
    with the test set. An unreadable file is an error, not a skipped pair: an evaluation must not
    quietly shrink its test set.
    """

    def __init__(self, images: Path, sketches: Path, size: int, limit: int | None = None) -> None:
        imgs = ImageFolder(images, size, verify=False, progress=False)
        skts = ImageFolder(sketches, size, verify=False, progress=False)
        common = sorted(set(imgs.ids) & set(skts.ids))
        if not common:
            raise InputError(f"{images} and {sketches}: no file ids in common (pairs are matched by relative name)")
        common = common[:limit] if limit is not None else common
        ii, si = {s: n for n, s in enumerate(imgs.ids)}, {s: n for n, s in enumerate(skts.ids)}
        self.ids, self.size = common, size
        self.image_paths = np.array([str(imgs.paths[ii[s]]) for s in common])
        self.sketch_paths = np.array([str(skts.paths[si[s]]) for s in common])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        i, j, m = key
        try:
            item = {"index": i, "image": load_uint8(self.image_paths[i], self.size)}
            if j >= 0:
                item["sketch"] = load_uint8(self.sketch_paths[i], self.size)  # RGB: made grey on the device
                item["style"] = item["image"] if j == i else load_uint8(self.image_paths[j], self.size)
                if m != j:  # the third image of the mismatched task (content leak, style sensitivity)
                    item["third"] = item["image"] if m == i else load_uint8(self.image_paths[m], self.size)
        except InputError as e:
            return {"index": i, "error": str(e)}
        return item


def _collate(items: list[dict]) -> dict:
    errors = [it["error"] for it in items if "error" in it]
    if errors:
        return {"error": errors[0]}
    out = {"index": torch.tensor([it["index"] for it in items])}
    for name in ("image", "sketch", "style", "third"):
        if name in items[0]:
            out[name] = torch.stack([it[name] for it in items])
    return out


def _on(batch: dict, name: str, device: torch.device) -> torch.Tensor:
    """A batch's tensor on the device in [0, 1]; sketches grey (uint8 travels, the conversion happens there)."""
    x = batch[name].to(device, non_blocking=True)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x
    return to_grey(x) if name == "sketch" and x.shape[1] == 3 else x


def _batches(data: Dataset, keys: list[tuple[int, int]], batch_size: int, workers: int, world: tuple[int, int]):
    """The batches of ``keys`` that belong to this process (every world[0]-th, from world[1])."""
    chunks = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    mine = chunks[world[1] :: world[0]]
    workers = workers if isinstance(data, HeldOutPairs) else 0
    loader = DataLoader(data, batch_sampler=mine, collate_fn=_collate, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    for batch in loader:
        if "error" in batch:
            raise InputError(f"unreadable file in the evaluation data: {batch['error']}")
        yield batch


def _in_order(world: tuple[int, int], rows: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """(index, values) pieces from every process → the values of all rows in index order."""
    rows = [r for part in gather(rows, world[0]) for r in part]
    index = torch.cat([i for i, _ in rows])
    values = torch.cat([v for _, v in rows])
    return values[index.argsort()]


def evaluate(
    model,
    images: torch.Tensor | Dataset,
    sketches: torch.Tensor | None = None,
    metrics: list[str] | tuple[str, ...] = DEFAULT_METRICS,
    *,
    refine: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    inception_path: str | None = None,
    progress: bool = True,
    bootstrap: int = 0,
    num_workers: int = 0,
) -> dict:
    """All requested metrics of ``model`` on a held-out set; returns a report dict.

    ``images``: a ``HeldOutPairs`` (streamed from disk by ``num_workers`` DataLoader workers), or
    tensors ``images`` (N, 3, S, S) and ``sketches`` (N, 1, S, S) in [0, 1] matched by position.
    Only per-sample values and Inception features (2 × 8 KB per image) are kept, never the images.
    Under torchrun / ``accelerate launch`` every process evaluates its share of the batches and all
    of them return the whole report. ``bootstrap`` > 0 adds ``bootstrap_std`` to FID and KID: their
    spread over that many resamples of the held-out set.
    """
    names = parse_metrics(list(metrics))
    data = images if sketches is None else TensorPairs(images, sketches)
    n, world = len(data), parallel_world()
    ctx = EvalContext(model, model.device, inception_path, refine)
    chosen = [REGISTRY[n] for n in names]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    # The real images' Inception features come from the cache when their pixels were seen before.
    reference, cached, key = None, False, ""
    if any(REFERENCE in m.collects for m in chosen):
        key = reference_key(ctx, _image_digests(data, batch_size, num_workers, world))
        reference = load_reference(key, cache_dir)
        cached = reference is not None
    opts = {"seed": seed, "bootstrap": bootstrap, "reference_cached": cached}
    size = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for task in ("mismatched", "paired"):
            todo = [m for m in chosen if m.task == task]
            if not todo:
                continue
            style_index = derangement(n, seed) if task == "mismatched" else torch.arange(n)
            # A third image per row (fixed per row, whatever the batch size), only for the metrics that use it.
            third = third_images(n, seed) if any(m.third_image for m in todo) else style_index
            keys = [(i, int(style_index[i]), int(third[i])) for i in range(n)]
            collect = list(dict.fromkeys(c for m in todo for c in m.collects if not (c == REFERENCE and cached)))
            rows: dict[str, list] = {m.name: [] for m in todo if m.per_sample is not None} | {c: [] for c in collect}
            batches = _batches(data, keys, batch_size, num_workers, world)
            total = math.ceil(math.ceil(n / batch_size) / world[0])
            for batch in tqdm(batches, total=total, desc=f"evaluating ({task})", disable=not progress):
                idx = batch["index"]
                sk, style, target = (_on(batch, k, ctx.device) for k in ("sketch", "style", "image"))
                other = _on(batch, "third", ctx.device) if "third" in batch else None
                size = int(target.shape[-1])
                out = model.decode(sk, model.style_vectors(style), refine).to(ctx.device)
                with torch.inference_mode():
                    for m in todo:
                        if m.per_sample is not None:
                            rows[m.name].append((idx, m.per_sample(ctx, out, sk, style, target, other).float().cpu()))
                    for c in collect:
                        rows[c].append((idx, COLLECTORS[c](ctx, out, sk, style, target).float().cpu()))
            gathered = {name: _in_order(world, r) for name, r in rows.items()}
            if cached:
                gathered[REFERENCE] = reference
            elif REFERENCE in gathered and world[1] == 0:
                store_reference(key, gathered[REFERENCE], cache_dir)
            for m in todo:
                results[m.name] = m.report(gathered, opts)
    for name in names:
        m = REGISTRY[name]
        results[name] = {**results[name], "better": m.better, "task": m.task, "description": m.description}
    return {
        "format": EVAL_REPORT_FORMAT,
        "version": __version__,
        "metrics": {n: results[n] for n in names},
        "n_test": n,
        "size": size,
        "refine": bool(refine and getattr(model, "refiner", None) is not None),
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_description(),
    }


def _image_digests(data, batch_size: int, workers: int, world) -> list[str]:
    """sha256 of every image's uint8 pixels, in order: a pass that only decodes, sharded like the rest."""
    rows = []
    for batch in _batches(data, [(i, -1, -1) for i in range(len(data))], batch_size, workers, world):
        pixels = batch["image"]
        pixels = pixels if pixels.dtype == torch.uint8 else (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        rows.append((batch["index"], [hashlib.sha256(p.contiguous().numpy().tobytes()).hexdigest() for p in pixels]))
    rows = [r for part in gather(rows, world[0]) for r in part]
    digests = dict(kv for index, hexes in rows for kv in zip(index.tolist(), hexes, strict=True))
    return [digests[i] for i in range(len(data))]


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
    """The held-out pairs as tensors in memory (small sets that are scored many times, e.g. an ablation);
    ``s2i eval`` streams them with ``HeldOutPairs`` instead."""
    pairs = HeldOutPairs(Path(images), Path(sketches), size, limit)
    batch = next(iter(_batches(pairs, [(i, i, i) for i in range(len(pairs))], len(pairs), 0, (1, 0))))
    return pairs.ids, batch["image"].float().div_(255), to_grey(batch["sketch"].float().div_(255))


__all__ = [
    "DEFAULT_METRICS",
    "REGISTRY",
    "EvalContext",
    "HeldOutPairs",
    "TensorPairs",
    "derangement",
    "evaluate",
    "held_out_dirs",
    "load_held_out",
]
