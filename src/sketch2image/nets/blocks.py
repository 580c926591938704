"""Layers shared by the stage networks: conv blocks, Feat-DMI, style injection."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    # Per-sample statistics: same behaviour in train and eval, and across any number of GPUs.
    return nn.GroupNorm(min(8, channels // 4) or 1, channels)


class ConvBlock(nn.Module):
    """conv3x3 → GroupNorm → LeakyReLU, twice; the first conv may downsample (stride 2)."""

    def __init__(self, cin: int, cout: int, down: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=1),
            group_norm(cout),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            group_norm(cout),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResBlock(nn.Module):
    """``LeakyReLU(x + GN(conv(LeakyReLU(GN(conv(x))))))``: where the lean networks keep their parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.body(x), 0.2)


def lean_down(cin: int, cout: int, *, norm: bool = True, residual: bool = False) -> nn.Sequential:
    """One strided 3×3 conv per halving (a residual block after it at low resolution)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=2, padding=1)]
    layers += [group_norm(cout)] if norm else []
    layers += [nn.LeakyReLU(0.2, inplace=True)] + ([ResBlock(cout)] if residual else [])
    return nn.Sequential(*layers)


def lean_up(cin: int, cout: int, *, residual: bool = False) -> nn.Sequential:
    """Conv at the *input* resolution, then bilinear ×2: a quarter of the FLOPs of conv-after-upsampling."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), group_norm(cout), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)]
    return nn.Sequential(*layers, *([ResBlock(cout)] if residual else []))


class DualMaskInjection(nn.Module):
    """DMI: ``a1·h·m + b1 + a2·h·(1−m) + b2`` with learnt per-channel a, b, near the identity at init.

    ``m`` is a soft mask in [0, 1], either one channel (the raw sketch, original DMI) or one
    per channel (content features through a sigmoid: Feat-DMI, the paper's revision).
    ``d out / d m = (a1 − a2)·h``: with a1 = a2 the masks would get no gradient until the two drift
    apart, so they start at 1 ± ``spread`` (the output stays within ±spread·h of the identity).
    """

    def __init__(self, channels: int, spread: float = 0.1) -> None:
        super().__init__()
        shape = (1, channels, 1, 1)
        self.a1 = nn.Parameter(torch.full(shape, 1.0 + spread))
        self.b1 = nn.Parameter(torch.zeros(shape))
        self.a2 = nn.Parameter(torch.full(shape, 1.0 - spread))
        self.b2 = nn.Parameter(torch.zeros(shape))

    def forward(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if m.shape[-2:] != h.shape[-2:]:
            m = F.interpolate(m, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return self.a1 * h * m + self.b1 + self.a2 * h * (1 - m) + self.b2


class StyleInjection(nn.Module):
    """Apply the style vector to a decoder feature map.

    ``mul`` (the paper's simplified AdaIN): an SE-style channel gate ``h · sigmoid(W s)``,
    no normalisation and no shift. ``add``: ``h + W s``. ``adain``: ``IN(h)·(1 + γ(s)) + β(s)``.
    """

    def __init__(self, style_dim: int, channels: int, mode: str = "mul") -> None:
        super().__init__()
        if mode not in ("mul", "add", "adain"):
            raise ValueError(f"style injection {mode!r} must be mul, add or adain")
        self.mode = mode
        self.proj = nn.Linear(style_dim, channels * (2 if mode == "adain" else 1))
        if mode == "mul":  # start as a gate near 1 (sigmoid(2)≈0.88) that already depends on the style
            with torch.no_grad():
                self.proj.weight.mul_(0.1)
            nn.init.constant_(self.proj.bias, 2.0)
        else:
            nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.proj(style)[:, :, None, None]
        if self.mode == "mul":
            return h * torch.sigmoid(s)
        if self.mode == "add":
            return h + s
        gamma, beta = s.chunk(2, dim=1)
        return F.instance_norm(h) * (1 + gamma) + beta


def run_block(block: nn.Module, *args: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """``block(*args)``, or recomputed in the backward pass when ``checkpoint`` (activation memory for compute)."""
    if checkpoint and block.training and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint as recompute

        return recompute(block, *args, use_reentrant=False)
    return block(*args)
