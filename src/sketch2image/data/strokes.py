"""Stroke normalisation: any real drawing → lines like the ones the auto-encoder was trained on.

The auto-encoder learnt from TOM sketches: black lines about ``stroke_width`` pixels wide on a
white page, at its own resolution. Real drawings come as fine pencil, 1-px grey vector lines on
a 1024 px canvas, a brush, chalk on a blackboard, or a scan with a grey, uneven page. ``auto``:

1. **Polarity** from the page, not from the ink: the median of a band along the image border.
   A dark border means light strokes on a dark page (chalk) and the image is inverted; a drawing
   whose ink covers more than half of it still has its paper at the border and is left alone.
2. **Ink relative to the page**: the local page brightness is estimated by a large max filter
   (which removes strokes) and a blur; a pixel's *contrast* is how much darker it is than its page.
   Ink is contrast above ``max(MIN_CONTRAST, ½ × typical stroke contrast)``, so faint grey lines and
   dark strokes on grey paper both count, scan noise and uniform pages do not.
3. **Size**: strokes are widened before downsampling so that none vanishes, the result is padded
   (never stretched) to a square at twice the model's size, thickened or thinned to
   ``2 × stroke_width``, and area-averaged down to the model's size (soft edges, like the training
   sketches).

*Blank* means no strokes after this. ``none`` keeps the previous behaviour (grey levels as drawn,
white-on-black inverted by the image median, LANCZOS resize).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from sketch2image.errors import InputError
from sketch2image.options import STROKES

MIN_CONTRAST = 0.08  # a pixel must be at least this much darker than its page to be ink (20 of 255)
BORDER = 0.04  # the band along the border that tells the page's colour, as a share of the side
MODES = STROKES  # what ``stroke=`` accepts


class BlankSketch(InputError):
    """No strokes found (after normalisation)."""


@dataclass
class StrokeReport:
    """What ``normalise_strokes`` did, for previews and messages."""

    inverted: bool
    threshold: float  # contrast above which a pixel was ink
    width_in: float  # stroke width at the model's resolution before thickening/thinning (px)
    width_out: float  # after (px)


def stroke_width(mask: np.ndarray | torch.Tensor) -> float:
    """Mean stroke width in pixels of a binary ink mask: 2 × area / boundary length.

    A line of length L and width w has area L·w and about 2·L boundary edges; no skeleton needed.
    """
    m = torch.as_tensor(np.asarray(mask)).bool()
    area = int(m.sum())
    if area == 0:
        return 0.0
    edges = int((m[:, 1:] != m[:, :-1]).sum() + (m[1:, :] != m[:-1, :]).sum())
    edges += int(m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum())  # the image border closes shapes
    return 2.0 * area / max(edges, 1)


def default_stroke_width(size: int) -> float:
    """The training stroke width of a model that did not record it (TOM draws ~1.6 px lines at 64 px)."""
    return max(1.5, size / 40)


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 else k + 1


def _max_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x[None, None], k, 1, k // 2)[0, 0] if k > 1 else x


def _polarity(grey: torch.Tensor) -> bool:
    """True when the page is dark (light strokes): the border band's median is below mid-grey."""
    h, w = grey.shape
    b = max(1, int(round(BORDER * min(h, w))))
    band = torch.cat([grey[:b].flatten(), grey[-b:].flatten(), grey[:, :b].flatten(), grey[:, -b:].flatten()])
    return bool(band.median() < 0.5)


def _contrast(grey: torch.Tensor) -> torch.Tensor:
    """How much darker each pixel is than its local page (>= 0)."""
    h, w = grey.shape
    k = _odd(max(7, min(h, w) / 12))
    page = _max_filter(grey, k)  # strokes narrower than k disappear
    page = F.avg_pool2d(page[None, None], k, 1, k // 2, count_include_pad=False)[0, 0]
    return (page - grey).clamp_min(0)


def _dilate(mask: torch.Tensor, k: int) -> torch.Tensor:
    return _max_filter(mask.float(), k) > 0.5 if k > 1 else mask


def _adjust_width(ink: torch.Tensor, target: float) -> tuple[torch.Tensor, float, float]:
    """Thicken (3×3 dilations, +2 px each; a 2×2 one for +1) or thin (erosions that keep thin parts)."""
    before = stroke_width(ink)
    out = ink
    diff = target - before
    if diff >= 0.75:
        for _ in range(int(diff // 2)):
            out = _dilate(out, 3)
        if diff % 2 >= 0.75:  # one more pixel: a 2×2 dilation
            out = F.max_pool2d(F.pad(out.float()[None, None], (0, 1, 0, 1)), 2, 1)[0, 0] > 0.5
    elif diff <= -1.5:
        for _ in range(int(-diff // 2)):
            eroded = ~_dilate(~out, 3)
            # keep the strokes an erosion would delete entirely (thinner than 3 px): no line may vanish
            out = eroded | (out & ~_dilate(eroded, 5))
    return out, before, stroke_width(out)


def normalise_strokes(grey: np.ndarray | torch.Tensor, size: int, stroke_width_px: float, mode: str = "auto",
                      name: str = "sketch") -> tuple[torch.Tensor, StrokeReport]:  # fmt: skip
    """A grey drawing (H, W) in [0, 1] → (1, size, size) dark lines on white, padded to a square.

    Raises ``BlankSketch`` when no strokes are found.
    """
    if mode not in MODES:
        raise ValueError(f"stroke mode {mode!r} must be one of {MODES}")
    g = torch.as_tensor(np.asarray(grey, dtype=np.float32)).clamp(0, 1)
    if mode == "none":
        return _legacy(g, size, name), StrokeReport(False, 0.5, float("nan"), float("nan"))
    inverted = _polarity(g)
    if inverted:
        g = 1 - g
    h, w = g.shape
    side = max(h, w)
    # Work at 2x the model's size; very large inputs are reduced first with a min filter so thin
    # dark lines survive (a 1-px line on a 4096 px canvas is still a line).
    work = 2 * size
    pre = max(1, side // (4 * work))
    if pre > 1:
        g = -F.max_pool2d(-g[None, None], pre, pre, ceil_mode=True)[0, 0]
        h, w = g.shape
        side = max(h, w)
    contrast = _contrast(g)
    candidates = contrast[contrast > MIN_CONTRAST]
    if candidates.numel() < 2:
        raise BlankSketch(f"{name}: the sketch is blank (no strokes darker than the page)")
    typical = float(torch.quantile(candidates.float()[:1_000_000], 0.9))
    threshold = max(MIN_CONTRAST, 0.5 * typical)
    ink = contrast > threshold
    # Widen before shrinking so that no stroke falls between the pixels of the smaller image.
    scale = side / work
    if scale > 1:
        ink = _dilate(ink, _odd(scale))
    hh, ww = max(1, round(h / scale)), max(1, round(w / scale))
    small = F.interpolate(ink.float()[None, None], size=(hh, ww), mode="area" if scale > 1 else "nearest")[0, 0]
    canvas = torch.zeros(work, work)
    top, left = (work - hh) // 2, (work - ww) // 2
    canvas[top : top + hh, left : left + ww] = small
    mask = canvas > 0.5 if scale > 1 else canvas > 0
    if not mask.any():
        raise BlankSketch(f"{name}: the sketch is blank (no strokes left after normalisation)")
    mask, before, after = _adjust_width(mask, 2 * stroke_width_px)
    out = 1 - F.avg_pool2d(mask.float()[None, None], 2)[0]  # back to the model's size, soft edges
    return out, StrokeReport(inverted, threshold, before / 2, after / 2)


def _legacy(g: torch.Tensor, size: int, name: str) -> torch.Tensor:
    """``mode="none"``: the drawing's own grey levels, inverted when the image median is dark."""
    from PIL import Image

    arr = g.numpy()
    if np.median(arr) < 0.5:
        arr = 1.0 - arr
    if (arr < 0.5).sum() == 0 or arr.std() < 1e-3:
        raise BlankSketch(f"{name}: the sketch is blank (no dark lines found)")
    h, w = arr.shape
    side = max(h, w)
    canvas = np.ones((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = arr
    img = Image.fromarray((canvas * 255).round().astype(np.uint8), "L").resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


def content_box(shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """Where an (H, W) drawing lies in the padded size×size square: (top, left, height, width)."""
    h, w = shape
    side = max(h, w)
    hh, ww = max(1, round(h * size / side)), max(1, round(w * size / side))
    return (size - hh) // 2, (size - ww) // 2, hh, ww


__all__ = ["BlankSketch", "MIN_CONTRAST", "MODES", "StrokeReport", "content_box", "default_stroke_width",
           "normalise_strokes", "stroke_width"]  # fmt: skip
