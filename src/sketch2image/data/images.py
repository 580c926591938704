"""Loading users' own image folders: robust decoding to 8-bit RGB, square crops, tensors.

Users point us at arbitrary folders (phone photos, scans, web downloads), so decoding must cope with
alpha, CMYK, 16-bit and EXIF-rotated files, and a single broken file must not kill a long training run.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sketch2image.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "ImageFolder",
    "as_rgb",
    "load_uint8",
    "open_rgb",
    "resize_square",
    "scan_images",
    "to_grey",
    "to_tensor",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Refuse absurdly large files (decompression bombs, gigapixel scans) before decoding them.
MAX_PIXELS = 64_000_000
# Folders at least this big get a progress bar; smaller ones load in a blink.
_PROGRESS_MIN = 200

log = logging.getLogger("sketch2image")

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def _reason(err: BaseException) -> str:
    """One-line, path-free explanation of why a file could not be decoded."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a directory"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, UnidentifiedImageError):
        return "not a recognised image format"
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    """Stack an 8-bit HxW array into an RGB image."""
    return Image.fromarray(np.repeat(arr[:, :, None], 3, axis=2), "RGB")


def as_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB. PIL's own convert clips high-bit-depth data, so scale by hand."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.size and arr.max() <= 255:
            scaled = arr  # 32-bit container holding 8-bit data
        else:
            scaled = np.clip(arr, 0, 65535) / 257.0  # 16-bit range: 65535 -> 255
        return _gray_to_rgb(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0  # normalised floats
        return _gray_to_rgb(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # PIL has no La -> RGBA
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled by the JPEG plugin), YCbCr, ...


def open_rgb(path: str | os.PathLike[str], *, draft: int | None = None) -> Image.Image:
    """Fully decode ``path`` into an 8-bit RGB image (EXIF orientation applied, alpha on white).

    ``draft``: if given, JPEGs may be DCT-downscaled while decoding, keeping both sides >= 2*draft pixels;
    a cheap speed-up when the image is resized to ``draft`` afterwards anyway.
    Raises InputError for missing, unreadable, truncated, non-image or oversized files.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    limit = f"limit is {MAX_PIXELS:,} pixels"
                    raise InputError(f"{path}: image too large ({w}x{h} = {w * h:,} pixels; {limit})")
                if draft is not None and im.format == "JPEG":
                    im.draft("RGB", (2 * draft, 2 * draft))  # only scales JPEGs; never changes their mode
                im.load()  # truncated files raise here (ImageFile.LOAD_TRUNCATED_IMAGES is left False)
                out = as_rgb(ImageOps.exif_transpose(im))
                return out.copy() if out is im else out  # `im` is invalid once the with-block closes it
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{path}: image too large ({_reason(e)}; limit is {MAX_PIXELS:,} pixels)") from e
    except Exception as e:  # decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise InputError(f"{path}: cannot read image ({_reason(e)})") from e


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to ``size`` and centre-crop to ``size``x``size`` in one resampling pass."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _to_uint8(img: Image.Image) -> torch.Tensor:
    """3xHxW uint8 tensor (copied, so it owns writable memory)."""
    arr = np.array(as_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_uint8(path: str | os.PathLike[str], size: int) -> torch.Tensor:
    """A file as a 3x``size``x``size`` uint8 tensor (shorter side scaled, centre-cropped); raises InputError."""
    return _to_uint8(resize_square(open_rgb(path, draft=size), size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """float32 CxHxW tensor in [0, 1] (non-RGB inputs go through the same conversion as open_rgb)."""
    return _to_uint8(img).float().div_(255.0)


def to_grey(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB → (N, 1, H, W) luma with the ITU-R 601 weights PIL's "L" mode uses."""
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)


def scan_images(root: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """All image files under ``root``, sorted by relative posix path so every run sees the same order.

    Hidden files and folders (name starting with ".") are skipped.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                path = Path(dirpath, name)
                if path.is_file():
                    found.append(path)
    if not found:
        where = "in it or its subfolders" if recursive else "directly in it"
        raise InputError(f"{root}: no image files {where} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _stable_ids(paths: list[Path], root: Path) -> list[str]:
    """Relative posix path without extension; files that would clash (a.png, a.jpg) keep their extension."""
    rels = [p.relative_to(root).as_posix() for p in paths]
    ids = [r[: len(r) - len(p.suffix)] for r, p in zip(rels, paths, strict=True)]
    while True:  # full relative paths are unique, so each round strictly shrinks the clashing set
        counts = Counter(ids)
        clashes = [i for i, s in enumerate(ids) if counts[s] > 1 and s != rels[i]]
        if not clashes:
            return ids
        for i in clashes:
            ids[i] = rels[i]


class ImageFolder(Dataset):
    """A user's image folder as ``dict(image=3xSxS float tensor in [0,1], id=str, index=int)`` items.

    With ``verify`` every file is decoded once up front so broken files are dropped (and reported) now,
    rather than crashing a data-loader worker hours into training. ``ids`` depend only on the folder
    listing, not on which files turned out to be broken, so they stay stable between runs.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int,
        *,
        recursive: bool = True,
        verify: bool = True,
        progress: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.root = Path(root)
        self.size = int(size)
        self.progress = progress
        paths = scan_images(self.root, recursive=recursive)
        ids = _stable_ids(paths, self.root)
        self.skipped: list[tuple[Path, str]] = []
        if verify:
            keep = []
            for i, path in enumerate(self._bar(paths, "checking images")):
                try:
                    open_rgb(path, draft=self.size)
                except InputError as e:
                    log.warning("skipping %s", e)
                    self.skipped.append((path, str(e)))
                else:
                    keep.append(i)
            if self.skipped:
                log.warning("skipped %d of %d files in %s", len(self.skipped), len(paths), self.root)
            if not keep:
                raise InputError(f"{self.root}: none of the {len(paths)} image files could be read")
            paths, ids = [paths[i] for i in keep], [ids[i] for i in keep]
        self.paths: list[Path] = paths
        self.ids: list[str] = ids

    def _bar(self, items: list[Path], desc: str) -> list[Path] | tqdm:
        if not self.progress or len(items) <= _PROGRESS_MIN:
            return items
        return tqdm(items, desc=desc, unit="img", dynamic_ncols=True)

    def __len__(self) -> int:
        return len(self.paths)

    def _load_uint8(self, index: int) -> torch.Tensor:
        return load_uint8(self.paths[index], self.size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image = self._load_uint8(index).float().div_(255.0)
        return {"image": image, "id": self.ids[index], "index": index}

    def load_all(self) -> torch.Tensor:
        """All images as one uint8 Nx3xSxS tensor: a pre-rendered in-memory cache for small datasets."""
        out = torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8)
        for i, _ in enumerate(self._bar(self.paths, "loading images")):
            out[i] = self._load_uint8(i)
        return out
