"""Batched, on-device augmentations for the auto-encoder (no per-sample Python loops).

Style input: a random combination of crop (shift), horizontal flip, rotation and scaling as
one affine warp per sample, all applied by a single ``grid_sample`` call. Sketch input:
random small regions masked out (lines become discontinuous) and optional line thickening.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_affine(
    images: torch.Tensor,
    *,
    max_rotate: float = 15.0,
    min_scale: float = 0.8,
    max_scale: float = 1.2,
    max_shift: float = 0.15,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
    rand: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp each image by its own random rotation/scale/shift/flip; borders are reflected.

    ``rand``: the (B, 5) uniform numbers to use (``affine_rand``), drawn ahead of the step.
    """
    b, device = images.shape[0], images.device
    rand = (affine_rand(b, generator) if rand is None else rand).to(device)
    angle = (rand[:, 0] * 2 - 1) * math.radians(max_rotate)
    # scale > 1 zooms in (a crop), < 1 zooms out
    scale = min_scale + rand[:, 1] * (max_scale - min_scale)
    shift = (rand[:, 2:4] * 2 - 1) * max_shift * 2  # grid coordinates span [-1, 1]
    flip = torch.where(rand[:, 4] < flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def affine_rand(b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The random numbers ``random_affine`` uses for a batch of ``b`` (CPU, so any device draws alike)."""
    return torch.rand(b, 5, generator=generator, device="cpu")


def mask_rand(b: int, regions: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The random numbers ``mask_regions`` uses for a batch of ``b``."""
    return torch.rand(b, regions, 4, generator=generator, device="cpu")


def mask_regions(
    sketches: torch.Tensor,
    *,
    regions: int = 4,
    max_frac: float = 0.2,
    generator: torch.Generator | None = None,
    rand: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paint ``regions`` random rectangles per sketch white (the background), breaking lines.

    ``rand``: the (B, regions, 4) uniform numbers to use (``mask_rand``), drawn ahead of the step.
    """
    b, _, h, w = sketches.shape
    if regions <= 0 or max_frac <= 0:
        return sketches
    device = sketches.device
    r = (mask_rand(b, regions, generator) if rand is None else rand).to(device)
    size_h, size_w = (r[..., 0] * max_frac * h).clamp(min=1), (r[..., 1] * max_frac * w).clamp(min=1)
    top, left = r[..., 2] * (h - size_h), r[..., 3] * (w - size_w)
    ys = torch.arange(h, device=device).view(1, 1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, 1, w)
    inside = (
        (ys >= top[..., None, None])
        & (ys < (top + size_h)[..., None, None])
        & (xs >= left[..., None, None])
        & (xs < (left + size_w)[..., None, None])
    )
    hole = inside.any(dim=1, keepdim=True)  # (B, 1, H, W)
    return torch.where(hole, torch.ones_like(sketches), sketches)


def thicken(
    sketches: torch.Tensor, p: float, generator: torch.Generator | None = None, rand: torch.Tensor | None = None
) -> torch.Tensor:
    """With probability ``p`` per sketch, make dark lines one pixel bolder on each side.

    ``rand``: the (B,) uniform numbers to use, drawn ahead of the step.
    """
    if p <= 0:
        return sketches
    rand = torch.rand(sketches.shape[0], generator=generator, device="cpu") if rand is None else rand
    pick = (rand < p).to(sketches.device)
    bold = -F.max_pool2d(-sketches, 3, 1, 1)
    return torch.where(pick[:, None, None, None], bold, sketches)
