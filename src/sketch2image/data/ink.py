"""How much a sketch draws: the check that stops blank or solid sketches from reaching training.

A diverged TOM draws all-black sketches and an untrained one all-white ones; either way the
auto-encoder then learns to ignore its sketch input. ``ink`` is the share of a sketch's pixels
darker than mid-grey. A sketch is *blank* below ``BLANK_BELOW`` of its pixels and *solid* above
``SOLID_ABOVE``; a set of sketches (one TOM snapshot, or a whole manifest) is refused when more
than ``MOSTLY`` of them are blank or solid, or any holds a non-finite value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

INK_LEVEL = 0.5  # a pixel is ink when darker than this (grey in [0, 1]; 128 of 255)
BLANK_BELOW = 0.002  # less ink than 0.2 % of the pixels: blank (at 128 px, fewer than 33 pixels)
SOLID_ABOVE = 0.75  # more ink than 75 % of the pixels: solid, not a line drawing
MOSTLY = 0.5  # a set fails when more than half of its sketches are blank or solid


def ink_fraction(sketches: torch.Tensor) -> torch.Tensor:
    """Per-sketch share of ink pixels, for (N, ..., H, W) grey sketches (float in [0, 1] or uint8).

    NaN pixels count as ink (a NaN sketch saved as PNG is black).
    """
    flat = sketches.reshape(sketches.shape[0], -1)
    level = INK_LEVEL * 255 if not flat.is_floating_point() else INK_LEVEL
    dark = ~(flat >= level)  # NaN >= level is False: ink
    return dark.float().mean(1)


@dataclass
class InkReport:
    """What a set of sketches draws: mean ink, and the shares that are blank, solid or non-finite."""

    n: int
    mean_ink: float
    blank: float
    solid: float
    non_finite: float = 0.0

    @classmethod
    def of(cls, ink: torch.Tensor, non_finite: torch.Tensor | None = None) -> InkReport:
        ink = ink.float().flatten()
        bad = 0.0 if non_finite is None else float(non_finite.float().mean())
        return cls(len(ink), float(ink.mean()), float((ink < BLANK_BELOW).float().mean()),
                   float((ink > SOLID_ABOVE).float().mean()), bad)  # fmt: skip

    @property
    def failed(self) -> bool:
        return self.non_finite > 0 or self.blank + self.solid > MOSTLY

    def problem(self) -> str:
        """Why the set fails, in words ('' when it does not)."""
        if self.non_finite > 0:
            return f"{self.non_finite:.0%} of its sketches hold NaN/inf values (the generator diverged)"
        if not self.failed:
            return ""
        parts = [(self.blank, f"blank (ink < {BLANK_BELOW:.1%} of pixels)"),
                 (self.solid, f"solid (ink > {SOLID_ABOVE:.0%})")]  # fmt: skip
        said = " and ".join(f"{share:.0%} of {self.n} sketches are {what}" for share, what in parts if share > 0)
        return f"{said}; mean ink {self.mean_ink:.1%}"

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return f"ink {self.mean_ink:.1%}, blank {self.blank:.0%}, solid {self.solid:.0%}"


THRESHOLDS = {"ink_level": INK_LEVEL, "blank_below": BLANK_BELOW, "solid_above": SOLID_ABOVE, "mostly": MOSTLY}

__all__ = ["BLANK_BELOW", "INK_LEVEL", "InkReport", "MOSTLY", "SOLID_ABOVE", "THRESHOLDS", "ink_fraction"]
