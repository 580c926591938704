"""The paired dataset of stages 2–3: every image with its K TOM sketches, joined by stable id.

Read from the manifest that ``s2i tom sketch`` writes. Images and sketches are decoded once
into uint8 tensors in memory (a pre-rendered cache: the training step then only indexes and
augments on device). An image whose sketches are missing is reported and left out, never
silently dropped or re-paired by position.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sketch2image.data.images import ImageFolder, open_rgb, resize_square, to_grey
from sketch2image.data.ink import InkReport, ink_fraction
from sketch2image.errors import InputError
from sketch2image.storage import SKETCH_MANIFEST_FORMAT

log = logging.getLogger("sketch2image")


def open_sketch(path: Path, size: int) -> np.ndarray:
    """A sketch as (size, size) uint8 grey, white background."""
    return np.asarray(resize_square(open_rgb(path), size).convert("L"), dtype=np.uint8)


def read_manifest(manifest: Path) -> dict:
    """A sketch manifest (``s2i tom sketch``), checked to be one."""
    try:
        data = json.loads(Path(manifest).read_text())
    except FileNotFoundError as e:
        raise InputError(f"{manifest}: sketch manifest not found (make one with `s2i tom sketch`)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{manifest}: unreadable sketch manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != SKETCH_MANIFEST_FORMAT or "items" not in data:
        raise InputError(f"{manifest}: not a sketch manifest (expected format {SKETCH_MANIFEST_FORMAT})")
    return data


def manifest_size(manifest: Path) -> int | None:
    """The size (px) a manifest's sketches were drawn at, if it records one."""
    size = read_manifest(manifest).get("size")
    return size if isinstance(size, int) else None


@dataclass
class PairedData:
    ids: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8
    sketches: torch.Tensor  # (N, K, S, S) uint8

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.sketches.shape[1]

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Float images (B, 3, S, S) and all K sketches (B, K, 1, S, S), in [0, 1]."""
        index = index.cpu()
        images = self.images[index].to(device, non_blocking=True).float().div_(255)
        sketches = self.sketches[index].to(device, non_blocking=True).float().div_(255).unsqueeze(2)
        return images, sketches

    @classmethod
    def from_manifest(
        cls, manifest: str | Path, size: int | None = None, *, progress: bool = True, workers: int = 4
    ) -> PairedData:
        """The pairs at ``size`` px; None: the size the sketches were drawn at (the manifest records it)."""
        manifest = Path(manifest)
        data = read_manifest(manifest)
        drawn = data.get("size")
        if size is None:
            if not isinstance(drawn, int):
                raise InputError(f"{manifest}: records no sketch size; give the size to load the pairs at")
            size = drawn
        elif isinstance(drawn, int) and drawn != size:
            log.warning("%s: sketches drawn at %d px are resized to %d px", manifest, drawn, size)
        root, base = Path(data["images_root"]), manifest.parent
        items, problems = [], 0
        k = max((len(it.get("sketches", [])) for it in data["items"]), default=0)
        for it in data["items"]:
            image = root / it["image"]
            sketches = [base / s for s in it.get("sketches", [])]
            missing = [p for p in [image, *sketches] if not p.is_file()]
            if not sketches or len(sketches) < k or missing:
                why = "has no sketches" if not sketches else f"missing {', '.join(map(str, missing[:3]))}"
                if sketches and len(sketches) < k and not missing:
                    why = f"has {len(sketches)} of {k} sketches"
                log.warning("%s: item %s %s; left out", manifest, it["id"], why)
                problems += 1
                continue
            items.append((it["id"], image, sketches))
        if problems:
            log.warning("%s: left out %d of %d items (see warnings above)", manifest, problems, len(data["items"]))
        if not items:
            raise InputError(f"{manifest}: no complete image+sketch pairs")

        def load(item):
            _, image, sketches = item
            img = np.asarray(resize_square(open_rgb(image), size), dtype=np.uint8).transpose(2, 0, 1)
            return img, np.stack([open_sketch(s, size) for s in sketches])

        with ThreadPoolExecutor(workers) as pool:
            loaded = list(
                tqdm(
                    pool.map(load, items),
                    total=len(items),
                    desc="loading pairs",
                    disable=not progress or len(items) < 200,
                )
            )
        images = torch.from_numpy(np.stack([a for a, _ in loaded]))
        sketches = torch.from_numpy(np.stack([b for _, b in loaded]))
        check_sketch_ink(manifest, sketches)
        return cls([i for i, _, _ in items], images, sketches)


def training_stroke_width(manifest: str | Path, size: int, n: int = 200) -> float | None:
    """Median line width (px, at ``size``) of up to ``n`` sketches of a manifest; None if it cannot be read.

    Recorded in exported models, so that input drawings are normalised to the line weight the
    auto-encoder learnt from (``data/strokes.py``).
    """
    from sketch2image.data.strokes import stroke_width

    try:
        data = json.loads(Path(manifest).read_text())
        paths = [Path(manifest).parent / it["sketches"][0] for it in data["items"] if it.get("sketches")]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    pick = paths[:: max(1, len(paths) // n)][:n]
    widths = []
    for p in pick:
        try:
            w = stroke_width(open_sketch(p, size) < 128)
        except InputError:
            continue
        if w > 0:
            widths.append(w)
    return float(np.median(widths)) if widths else None


def check_sketch_ink(manifest: Path, sketches: torch.Tensor) -> None:
    """Refuse a manifest whose sketches are mostly blank or solid; warn about a snapshot that is.

    Training on such sketches teaches the auto-encoder to ignore its sketch input (``data/ink.py``).
    """
    ink = ink_fraction(sketches.flatten(0, 1)).view(sketches.shape[:2])  # (N, K)
    whole = InkReport.of(ink)
    if whole.failed:
        raise InputError(
            f"{manifest}: its sketches are unusable for training: {whole.problem()}. Was TOM diverged or "
            "undertrained? Look at its samples/ and redraw the sketches (thresholds: README, 'Sketch checks')"
        )
    for j in range(ink.shape[1]):
        column = InkReport.of(ink[:, j])
        if column.failed:
            log.warning("%s: the sketches of snapshot %d are unusable (%s)", manifest, j, column.problem())


def load_pairs_by_id(
    images: Path, sketches: Path, size: int, *, strict: bool = False
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Two folders whose files share ids (e.g. held-out images and their real line art) → matched tensors.

    ``strict``: an unreadable file is an error rather than a skipped pair (evaluation must not
    quietly shrink its test set).
    """
    imgs = ImageFolder(images, size, progress=False)
    skts = ImageFolder(sketches, size, progress=False)
    broken = imgs.skipped + skts.skipped
    if strict and broken:
        listed = "; ".join(why for _, why in broken[:3])
        raise InputError(f"{len(broken)} unreadable file(s) in the evaluation data: {listed}")
    common = sorted(set(imgs.ids) & set(skts.ids))
    if not common:
        raise InputError(f"{images} and {sketches}: no file ids in common (pairs are matched by relative name)")
    ii = {s: n for n, s in enumerate(imgs.ids)}
    si = {s: n for n, s in enumerate(skts.ids)}
    x = torch.stack([imgs[ii[s]]["image"] for s in common])
    y = torch.stack([skts[si[s]]["image"] for s in common])
    return common, x, to_grey(y)


__all__ = ["PairedData", "load_pairs_by_id", "open_sketch"]
