"""The refiner's exponential moving average (paper appendix A.4): training code, applied by ``train/gan.py``;
the exported refiner is the averaged copy."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, ramp: bool = True) -> float:
    """The EMA decay used after update ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))`` with the
    ramp, so that early on the average follows the generator instead of keeping its initial weights
    (without it, 0.999^500 = 61 % of a 500-step EMA would still be the initialisation)."""
    return min(decay, (1 + step) / (10 + step)) if ramp else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


__all__ = ["ema_decay_at", "ema_update"]
