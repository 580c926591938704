"""The paired dataset of stages 2–3: every image with its K TOM sketches, joined by stable id.

Read lazily from the manifest that ``s2i tom sketch`` writes. Startup only reads the manifest,
checks that the files exist and samples the sketches' ink; a training step then decodes just its
own rows and just the sketches it uses (``PairedFiles``, read by ``DataLoader`` workers), so memory
does not grow with the data set. An image whose files are missing is reported and left out at
startup; one that turns out unreadable later is reported once and replaced by the next readable
pair, so a long run never dies on one bad file and never drops it silently.

``PairedData`` is the same interface over tensors already in memory (tests, speed benchmarks).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sketch2image.data.images import ImageFolder, open_rgb, resize_square, to_grey
from sketch2image.data.ink import INK_LEVEL, InkReport
from sketch2image.errors import InputError
from sketch2image.storage import SKETCH_MANIFEST_FORMAT, read_document

log = logging.getLogger("sketch2image")

# Sketches per snapshot whose ink is checked at startup, spread over the set: a fixed count, so startup
# costs the same for any data set size (at 1,000 it grew by 5 s from 150 to 2,400 images at 512 px).
# A snapshot fails when more than half of its sketches are blank or solid; 128 samples put that share
# within about ±9 % (95 %).
INK_SAMPLE = 128
MAX_SUBSTITUTES = 64  # unreadable pairs in a row before a run stops (a vanished disk, not a bad file)

# A batch key: (step, dataset index, sketch snapshots to decode).
Key = tuple[int, int, tuple[int, ...]]


def open_sketch(path: str | os.PathLike, size: int) -> np.ndarray:
    """A sketch as (size, size) uint8 grey, white background."""
    return np.asarray(resize_square(open_rgb(path), size).convert("L"), dtype=np.uint8)


def open_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """An image as (3, size, size) uint8."""
    return np.asarray(resize_square(open_rgb(path), size), dtype=np.uint8).transpose(2, 0, 1)


def read_manifest(manifest: Path) -> dict:
    """A sketch manifest (``s2i tom sketch``), checked to be one."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"{manifest}: sketch manifest not found (make one with `s2i tom sketch`)")
    return read_document(manifest, (SKETCH_MANIFEST_FORMAT,), "sketch manifest", keys=("items",), error=InputError)


def manifest_size(manifest: Path) -> int | None:
    """The size (px) a manifest's sketches were drawn at, if it records one."""
    size = read_manifest(manifest).get("size")
    return size if isinstance(size, int) else None


def images_root(data: dict, manifest: Path) -> Path:
    """Where a manifest's images live: ``images_root`` relative to the manifest's folder (so a data folder
    can be moved or mounted elsewhere), else the absolute path it was written with."""
    base = Path(manifest).resolve().parent
    tried = []
    for key in ("images_root", "images_root_absolute"):
        value = data.get(key)
        if isinstance(value, str):
            root = base / value  # an absolute value stays absolute
            if root.is_dir():
                return root
            tried.append(str(root))
    raise InputError(f"{manifest}: its image folder is not there (looked in {' and '.join(tried) or 'nothing'})")


@dataclass
class PairIndex:
    """What a manifest lists, checked: plain arrays (cheap to send to other ranks and workers).

    Paths are numpy string arrays rather than lists of Python objects, so forked DataLoader workers
    share them instead of copying them page by page as reference counts change.
    """

    manifest: str
    size: int
    ids: np.ndarray  # (N,) str
    images: np.ndarray  # (N,) str, absolute
    sketches: np.ndarray  # (N, K) str, absolute

    @property
    def k(self) -> int:
        return self.sketches.shape[1]

    @classmethod
    def scan(cls, manifest: str | Path, size: int | None = None) -> PairIndex:
        """Read and check a manifest: every listed file exists, every item has all K sketches."""
        manifest = Path(manifest)
        data = read_manifest(manifest)
        drawn = data.get("size")
        if size is None:
            if not isinstance(drawn, int):
                raise InputError(f"{manifest}: records no sketch size; give the size to load the pairs at")
            size = drawn
        elif isinstance(drawn, int) and drawn != size:
            log.warning("%s: sketches drawn at %d px are resized to %d px", manifest, drawn, size)
        root, base = images_root(data, manifest), manifest.resolve().parent
        items = data["items"]
        k = max((len(it.get("sketches", [])) for it in items), default=0)
        ids, images, sketches, problems = [], [], [], 0
        for it in items:
            image = root / it["image"]
            skts = [base / s for s in it.get("sketches", [])]
            missing = [p for p in [image, *skts] if not p.is_file()]
            if not skts or len(skts) < k or missing:
                why = "has no sketches" if not skts else f"missing {', '.join(map(str, missing[:3]))}"
                if skts and len(skts) < k and not missing:
                    why = f"has {len(skts)} of {k} sketches"
                log.warning("%s: item %s %s; left out", manifest, it["id"], why)
                problems += 1
                continue
            ids.append(it["id"])
            images.append(str(image))
            sketches.append([str(s) for s in skts])
        if problems:
            log.warning("%s: left out %d of %d items (see warnings above)", manifest, problems, len(items))
        if not ids:
            raise InputError(f"{manifest}: no complete image+sketch pairs")
        return cls(str(manifest), int(size), np.array(ids), np.array(images), np.array(sketches).reshape(len(ids), k))

    def check_ink(self, sample: int = INK_SAMPLE, workers: int = 8) -> None:
        """Refuse a manifest whose sketches are mostly blank or solid; warn about a snapshot that is.

        Training on such sketches teaches the auto-encoder to ignore its sketch input (``data/ink.py``).
        Up to ``sample`` sketches per snapshot, spread over the set, are decoded, so the check costs the
        same for 1,000 images as for 100,000. Integer arithmetic: no float copy of the sketches.
        """
        n = len(self.ids)
        rows = np.unique(np.linspace(0, n - 1, min(sample, n)).round().astype(np.int64))
        level = round(INK_LEVEL * 255)  # uint8 x is ink when x < 128 (the same as x < 127.5)

        def ink(path: str) -> float:
            try:
                sk = open_sketch(path, self.size)
            except InputError as e:
                log.warning("%s (ink check: counted as blank)", e)
                return 0.0
            return int(np.count_nonzero(sk < level)) / sk.size

        paths = self.sketches[rows]  # (n, K)
        with ThreadPoolExecutor(workers) as pool:
            values = list(pool.map(ink, paths.reshape(-1).tolist()))
        table = torch.tensor(values, dtype=torch.float64).view(paths.shape)
        whole = InkReport.of(table)
        if whole.failed:
            raise InputError(
                f"{self.manifest}: its sketches are unusable for training: {whole.problem()} (in a sample of "
                f"{len(rows)} items). Was TOM diverged or undertrained? Look at its samples/ and redraw the "
                "sketches (thresholds: docs/training.md, 'Sketch checks')"
            )
        for j in range(table.shape[1]):
            column = InkReport.of(table[:, j])
            if column.failed:
                log.warning("%s: the sketches of snapshot %d are unusable (%s)", self.manifest, j, column.problem())


class PairedFiles(Dataset):
    """Pairs decoded on demand: ``self[(step, index, picks)]`` → uint8 image and the ``picks`` sketches.

    An unreadable file is never raised inside a worker: the item is replaced by the next readable
    one, and the batch says which file failed (``broken``) so the main process reports it once.
    """

    def __init__(self, index: PairIndex) -> None:
        self.index = index
        self.size = index.size
        self._broken: set[int] = set()  # per process: items known to be unreadable

    @classmethod
    def from_manifest(cls, manifest: str | Path, size: int | None = None, *, ink_check: bool = True) -> PairedFiles:
        index = PairIndex.scan(manifest, size)
        if ink_check:
            index.check_ink()
        return cls(index)

    def __len__(self) -> int:
        return len(self.index.ids)

    @property
    def k(self) -> int:
        return self.index.k

    @property
    def ids(self) -> list[str]:
        return self.index.ids.tolist()

    def load(self, i: int, picks: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, S, S) and (len(picks), S, S) uint8; raises InputError naming an unreadable file."""
        image = open_image(self.index.images[i], self.size)
        decoded = {j: open_sketch(self.index.sketches[i, j], self.size) for j in dict.fromkeys(picks)}
        return torch.from_numpy(image.copy()), torch.from_numpy(np.stack([decoded[j] for j in picks]))

    def __getitem__(self, key: Key) -> dict[str, Any]:
        step, i, picks = key
        broken: list[str] = []
        for attempt in range(min(MAX_SUBSTITUTES, len(self))):
            j = (i + attempt) % len(self)  # deterministic: the same substitute on any number of processes
            if j in self._broken:
                continue
            try:
                image, sketches = self.load(j, picks)
            except InputError as e:
                self._broken.add(j)
                broken.append(str(e))
                continue
            return {"step": step, "index": j, "image": image, "sketches": sketches, "broken": broken}
        return {"step": step, "index": i, "fatal": f"{len(broken)} unreadable pairs in a row ({'; '.join(broken[:3])})"}


class PairedData(Dataset):
    """The same interface over tensors in memory: images (N, 3, S, S) and sketches (N, K, S, S), uint8."""

    def __init__(self, ids: list[str], images: torch.Tensor, sketches: torch.Tensor) -> None:
        self._ids, self.images, self.sketches = list(ids), images, sketches
        self.size = images.shape[-1]

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def k(self) -> int:
        return self.sketches.shape[1]

    @property
    def ids(self) -> list[str]:
        return self._ids

    @classmethod
    def from_files(cls, files: PairedFiles, workers: int = 4) -> PairedData:
        """Every pair of ``files`` decoded into memory: for small sets that are hashed or reused whole
        (benchmarks); training reads ``PairedFiles`` directly."""
        every = tuple(range(files.k))
        with ThreadPoolExecutor(workers) as pool:
            pairs = list(pool.map(lambda i: files.load(i, every), range(len(files))))
        return cls(files.ids, torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs]))

    def load(self, i: int, picks: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.sketches[i, list(picks)]

    def __getitem__(self, key: Key) -> dict[str, Any]:
        step, i, picks = key
        image, sketches = self.load(i, picks)
        return {"step": step, "index": i, "image": image, "sketches": sketches, "broken": []}


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch of pair items (uint8); carry the step, the indices used and any unreadable files."""
    out: dict[str, Any] = {"step": items[0]["step"], "broken": [b for it in items for b in it["broken"]]
                           if all("broken" in it for it in items) else []}  # fmt: skip
    fatal = [it["fatal"] for it in items if "fatal" in it]
    if fatal:
        out["fatal"] = fatal[0]
        return out
    out["index"] = torch.tensor([it["index"] for it in items])
    out["image"] = torch.stack([it["image"] for it in items])
    out["sketches"] = torch.stack([it["sketches"] for it in items])
    return out


def as_float(batch: dict[str, Any], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated batch on ``device`` in [0, 1]: images (B, 3, S, S), sketches (B, n, 1, S, S).

    The uint8 tensors travel; the conversion happens on the device. Images are laid out NHWC in memory,
    as the in-memory path delivered them (a stack of HWC arrays): the networks then pick the same
    kernels, and a run is bit-identical to one made before this reader existed.
    """
    images = batch["image"].to(device, non_blocking=True).float().div_(255)
    images = images.contiguous(memory_format=torch.channels_last)
    sketches = batch["sketches"].to(device, non_blocking=True).float().div_(255).unsqueeze(2)
    return images, sketches


def pairs_at(source: PairedFiles | PairedData, index: list[int], picks: tuple[int, ...], device) -> tuple:
    """A few pairs read directly (sample grids): float images and sketches as ``as_float`` gives them."""
    return as_float(collate_pairs([source[(0, i, picks)] for i in index]), device)


def training_stroke_width(manifest: str | Path, size: int, n: int = 200) -> float | None:
    """Median line width (px, at ``size``) of up to ``n`` sketches of a manifest; None if it cannot be read.

    Recorded in exported models, so that input drawings are normalised to the line weight the
    auto-encoder learnt from (``data/strokes.py``).
    """
    from sketch2image.data.strokes import stroke_width

    try:
        data = read_manifest(Path(manifest))
        paths = [Path(manifest).parent / it["sketches"][0] for it in data["items"] if it.get("sketches")]
    except (InputError, KeyError, TypeError):
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


__all__ = [
    "PairIndex",
    "PairedData",
    "PairedFiles",
    "as_float",
    "collate_pairs",
    "load_pairs_by_id",
    "open_sketch",
    "pairs_at",
]
