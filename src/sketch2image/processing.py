"""What a user hands the model, turned into the model's tensors, and the model's squares turned back into
pictures (the idea of diffusers' image processors): the pipeline itself only paints tensors.

Inputs may be paths, PIL images or tensors. Sketches of any size and aspect are normalised:
alpha composited on white, colour turned grey, white-on-black inverted, padded (not stretched)
to a square, resized to the model's size, their lines brought to the training line weight.
Style images: shorter side resized, centre square.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from sketch2image.data.images import as_rgb, open_rgb, resize_square, to_tensor
from sketch2image.data.strokes import MODES, content_box, default_stroke_width, normalise_strokes
from sketch2image.errors import InputError

ERRORS = ("raise", "skip")
log = logging.getLogger("sketch2image")
ImageLike = str | os.PathLike | Image.Image | torch.Tensor
Shape = tuple[int, int]


def _as_pil(item: ImageLike) -> Image.Image:
    if isinstance(item, (str, os.PathLike)):
        return open_rgb(item)
    if isinstance(item, Image.Image):
        return as_rgb(item)
    raise TypeError(f"expected a path or PIL image, got {type(item).__name__}")


def sketch_grey(item: ImageLike) -> np.ndarray:
    """Any sketch input → (H, W) grey in [0, 1] at its own size (alpha composited on white)."""
    if isinstance(item, torch.Tensor):
        t = item.detach().float().cpu()
        t = t.mean(0, keepdim=True) if t.dim() == 3 and t.shape[0] in (3, 4) else t.reshape(1, *t.shape[-2:])
        return t[0].clamp(0, 1).numpy()
    return np.asarray(_as_pil(item).convert("L"), dtype=np.float32) / 255.0


def normalize_sketch(
    item: ImageLike,
    size: int,
    name: str = "sketch",
    stroke: str = "auto",
    stroke_width: float | None = None,
) -> torch.Tensor:
    """Any sketch → (1, size, size) grey in [0, 1], dark lines on white, padded (never stretched) to a square.

    ``stroke="auto"`` normalises the strokes to the model's training line weight (``data/strokes.py``);
    ``"none"`` keeps the drawing's grey levels. A sketch with no strokes raises ``InputError`` (blank).
    """
    width = stroke_width if stroke_width is not None else default_stroke_width(size)
    return normalise_strokes(sketch_grey(item), size, width, stroke, name)[0]


def normalize_style(item: ImageLike, size: int) -> torch.Tensor:
    """Any image → (3, size, size) RGB in [0, 1] (shorter side resized, centre square)."""
    if isinstance(item, torch.Tensor):
        t = item.float()
        if t.dim() != 3 or t.shape[0] != 3:
            raise InputError(f"style tensor must be (3, H, W), got {tuple(t.shape)}")
        return torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return to_tensor(resize_square(_as_pil(item), size))


def input_name(item: ImageLike, i: int) -> str:
    """How an error names an input: its path, or its position."""
    return str(item) if isinstance(item, (str, os.PathLike)) else f"input {i}"


def listify(x: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One input or many (a list, or a (B, C, H, W) tensor) → a list."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return list(x)
    return [x]


def stitch(styles: torch.Tensor) -> torch.Tensor:
    """2 styles → left | right halves; 4 → quadrants (paper Fig. 7): one reference image."""
    n, _, h, w = styles.shape
    out = styles[0].clone()
    if n == 2:
        out[:, :, w // 2 :] = styles[1][:, :, w // 2 :]
    elif n == 4:
        out[:, h // 2 :, : w // 2] = styles[2][:, h // 2 :, : w // 2]
        out[:, : h // 2, w // 2 :] = styles[1][:, : h // 2, w // 2 :]
        out[:, h // 2 :, w // 2 :] = styles[3][:, h // 2 :, w // 2 :]
    else:
        raise InputError(f"stitch mixing takes 2 or 4 style images, got {n}")
    return out


def fit_output(image: torch.Tensor, shape: Shape | None, fit: str) -> torch.Tensor:
    """A (3, size, size) output cut to the (H, W) sketch's aspect ratio (``crop``), also resized to
    (H, W) with LANCZOS (``original``), or left as the model's square (``square``)."""
    if fit == "square" or shape is None:
        return image
    top, left, hh, ww = content_box(shape, image.shape[-1])
    out = image[:, top : top + hh, left : left + ww]
    if fit == "original" and tuple(out.shape[-2:]) != tuple(shape):
        pil = to_pil(out[None])[0].resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
        out = to_tensor(pil)
    return out


def to_pil(images: torch.Tensor | Sequence[torch.Tensor]) -> list[Image.Image]:
    """(B, 3, H, W) or a list of (3, H, W) images in [0, 1] → PIL images."""
    out = []
    for img in images:
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


class InputProcessor:
    """A model's way of reading inputs: its size and the line weight its training sketches had."""

    def __init__(self, size: int, stroke_width: float) -> None:
        self.size, self.stroke_width = size, stroke_width

    def sketch(self, item: ImageLike, name: str = "sketch", stroke: str = "auto") -> torch.Tensor:
        """One sketch → (1, size, size); ``InputError`` naming it if it cannot be used."""
        return normalize_sketch(item, self.size, name, stroke, self.stroke_width)

    def sketches(
        self, items: Sequence[ImageLike], errors: str = "raise", stroke: str = "auto"
    ) -> tuple[list[torch.Tensor | None], list[Shape | None]]:
        """Each sketch normalised (None where ``errors="skip"`` skipped it, one warning line each), with its
        own (H, W) for cutting the output back to its aspect."""
        if stroke not in MODES:
            raise InputError(f"stroke={stroke!r} must be one of {MODES}")

        def one(x: ImageLike, i: int) -> tuple[torch.Tensor, Shape]:
            grey = sketch_grey(x)
            return normalise_strokes(grey, self.size, self.stroke_width, stroke, input_name(x, i))[0], grey.shape

        done = _each(items, one, errors)
        return [None if d is None else d[0] for d in done], [None if d is None else d[1] for d in done]

    def styles(self, items: Sequence[ImageLike], errors: str = "raise") -> list[torch.Tensor | None]:
        """Each image → (3, size, size), None where ``errors="skip"`` skipped it."""
        if not items:
            raise InputError("no style images given")
        return _each(items, lambda x, i: normalize_style(x, self.size), errors)


def _each(items: Sequence[ImageLike], make, errors: str) -> list:
    if errors not in ERRORS:
        raise ValueError(f"errors={errors!r} must be one of {ERRORS}")
    out = []
    for i, x in enumerate(items):
        try:
            out.append(make(x, i))
        except InputError as e:
            skip(e, errors)
            out.append(None)
    return out


def skip(err: InputError, errors: str) -> None:
    """An unusable input: raise (``errors="raise"``), or log one line and go on (``"skip"``)."""
    if errors == "raise":
        raise err
    log.warning("skipped %s", err)
