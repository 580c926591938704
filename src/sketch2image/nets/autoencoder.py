"""Stage 2 networks (paper §4.1): style encoder, content encoder, decoder G1.

Data path: ``E_style(RGB) → f_style (512)``; ``E_content(sketch) → f_content (512×8×8)`` plus
its higher-resolution maps; ``G1`` upsamples ``f_content``, on each level injects the content
(Feat-DMI: content maps as per-channel soft masks) and the style (channel-wise gate).

Two layouts (``AutoEncoderConfig.arch``) with the same interface and losses:

- ``lean`` (default): the parameters sit at low resolution. Encoders halve with one strided conv
  per level from the first layer on, decoder levels convolve *before* upsampling, residual blocks
  sit only at ``heavy_res`` and below, and the full-size level takes the raw sketch as its DMI
  mask (there is no full-size content map). 2-3x fewer FLOPs than ``classic`` at equal parameters.
- ``classic``: two convs per level at every resolution including full size (the first
  implementation; its checkpoints and the ablation figures in docs/BENCHMARKS.md use it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import torch
from torch import nn

from sketch2image.nets.blocks import (
    ConvBlock,
    DualMaskInjection,
    ResBlock,
    StyleInjection,
    group_norm,
    lean_down,
    lean_up,
    run_block,
)
from sketch2image.storage import AE_FORMAT, AE_FORMATS_READ, Checked, Pretrained, from_dict, known_fields


@dataclass
class AutoEncoderConfig(Checked):
    """The network's settings (what ``config.json`` of a saved auto-encoder holds). The training config
    ``configs.AEConfig`` extends it with how the network is trained."""

    KIND: ClassVar[str] = "auto-encoder config"
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"arch": "classic"}  # files written before ``arch`` existed

    size: int = 64
    arch: str = "lean"  # lean | classic
    width: int = 32  # channels at full resolution (doubling per halving, <= max_width)
    max_width: int = 512
    heavy_res: int = 8  # lean: residual blocks at this resolution and below
    style_dim: int = 512
    content_res: int = 8  # bottleneck resolution of the content map (paper: 512 x 8 x 8)
    dmi: str = "feature"  # none | sketch | feature
    style_injection: str = "mul"  # mul (simplified AdaIN) | add | adain
    style_min_res: int = 8  # style is injected on decoder layers at this resolution and above

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.width < 1 or self.max_width < 1 or self.style_dim < 1 or self.heavy_res < 0 or self.style_min_res < 0:
            problems.append("width, max_width and style_dim must be >= 1, heavy_res and style_min_res >= 0")
        if self.dmi not in ("none", "sketch", "feature"):
            problems.append(f"dmi {self.dmi!r} must be none, sketch or feature")
        if self.arch not in ("lean", "classic"):
            problems.append(f"arch {self.arch!r} must be lean or classic")
        if self.style_injection not in ("mul", "add", "adain"):
            problems.append(f"style_injection {self.style_injection!r} must be mul, add or adain")
        if self.size < 2 * self.content_res or self.size & (self.size - 1) or self.content_res & (self.content_res - 1):
            problems.append(f"size {self.size} and content_res {self.content_res} must be powers of two, size >= 2x")
        return problems

    def model_config(self) -> AutoEncoderConfig:
        """The network's settings alone (of a training config that extends this one: its network part)."""
        return AutoEncoderConfig(**known_fields(AutoEncoderConfig, dataclasses.asdict(self)))


def channels(cfg: AutoEncoderConfig, res: int) -> int:
    """Channels at a given resolution: ``width`` at full size, doubling per halving, capped."""
    return min(cfg.max_width, cfg.width * (cfg.size // res))


def resolutions(cfg: AutoEncoderConfig) -> list[int]:
    """Feature resolutions from full size down to the content bottleneck."""
    n = int(math.log2(cfg.size // cfg.content_res))
    return [cfg.size // 2**i for i in range(n + 1)]


def encoder_trunk(cfg: AutoEncoderConfig, cin: int, res: list[int]) -> tuple[nn.Module, nn.ModuleList]:
    """(stem, downsampling blocks) from ``res[0]`` to ``res[-1]``; the lean stem is empty."""
    if cfg.arch == "classic":
        stem = ConvBlock(cin, channels(cfg, res[0]))
        return stem, nn.ModuleList(ConvBlock(channels(cfg, a), channels(cfg, b), down=True) for a, b in pairwise(res))
    return nn.Identity(), nn.ModuleList(
        lean_down(cin if i == 0 else channels(cfg, a), channels(cfg, b), norm=i > 0, residual=b <= cfg.heavy_res)
        for i, (a, b) in enumerate(pairwise(res))
    )


class ContentEncoder(nn.Module):
    """Sketch (1 channel) → content maps at every resolution; the last is ``f_content``.

    Classic: maps from full size down to ``content_res``; lean: from half size down.
    """

    def __init__(self, cfg: AutoEncoderConfig) -> None:
        super().__init__()
        res = resolutions(cfg)
        self.stem, self.down = encoder_trunk(cfg, 1, res)
        self.keep_stem = cfg.arch == "classic"  # lean: maps from half size down
        self.out = nn.Conv2d(channels(cfg, res[-1]), cfg.style_dim, 1)  # f_content has style_dim channels
        kept = res if self.keep_stem else res[1:]
        self.channels = [channels(cfg, r) for r in kept[:-1]] + [cfg.style_dim]  # of each map forward returns
        self.ckpt = False  # recompute blocks in backward (SketchAutoEncoder.gradient_checkpointing)

    def forward(self, sketch: torch.Tensor) -> list[torch.Tensor]:
        h = run_block(self.stem, sketch, checkpoint=self.ckpt)
        maps = [h] if self.keep_stem else []
        for block in self.down:
            h = run_block(block, h, checkpoint=self.ckpt)
            maps.append(h)
        maps[-1] = self.out(h)
        return maps  # full resolution first, f_content last


class StyleEncoder(nn.Module):
    """RGB → style vector: a conv pyramid, global average pooling, a linear layer."""

    def __init__(self, cfg: AutoEncoderConfig) -> None:
        super().__init__()
        res = resolutions(cfg)
        if cfg.arch == "classic" and res[-1] >= 8:
            res = res + [res[-1] // 2]  # one level deeper: style is global
        self.stem, self.down = encoder_trunk(cfg, 3, res)
        self.fc = nn.Linear(channels(cfg, res[-1]), cfg.style_dim)
        self.ckpt = False  # recompute blocks in backward (SketchAutoEncoder.gradient_checkpointing)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = run_block(self.stem, image, checkpoint=self.ckpt)
        for block in self.down:
            h = run_block(block, h, checkpoint=self.ckpt)
        return self.fc(h.mean(dim=(2, 3)))


class Decoder(nn.Module):
    """G1: ``f_content`` → RGB, with DMI content injection and style injection per level."""

    def __init__(self, cfg: AutoEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ckpt = False
        res = resolutions(cfg)[::-1]  # bottleneck first
        if cfg.arch == "classic":
            self.inp = ConvBlock(cfg.style_dim, channels(cfg, res[0]))
            self.up = nn.ModuleList(
                nn.Sequential(
                    nn.Upsample(scale_factor=2.0, mode="nearest"), ConvBlock(channels(cfg, a), channels(cfg, b))
                )
                for a, b in pairwise(res)
            )
        else:
            c0 = channels(cfg, res[0])
            self.inp = nn.Sequential(
                nn.Conv2d(cfg.style_dim, c0, 3, padding=1), group_norm(c0), nn.LeakyReLU(0.2), ResBlock(c0)
            )
            self.up = nn.ModuleList(
                lean_up(channels(cfg, a), channels(cfg, b), residual=b <= cfg.heavy_res) for a, b in pairwise(res)
            )
        self.level_res = res
        self.dmi = nn.ModuleList(
            DualMaskInjection(channels(cfg, r)) if cfg.dmi != "none" and i > 0 else nn.Identity()
            for i, r in enumerate(res)
        )
        self.style = nn.ModuleList(
            StyleInjection(cfg.style_dim, channels(cfg, r), cfg.style_injection) if r >= cfg.style_min_res else None
            for r in res
        )
        self.to_rgb = nn.Conv2d(channels(cfg, res[-1]), 3, 3, padding=1)

    def forward(self, content: list[torch.Tensor], style: torch.Tensor, sketch: torch.Tensor | None = None):
        maps = content[::-1]  # bottleneck first, aligned with self.level_res
        h = self.inp(maps[0])
        for i in range(len(self.level_res)):
            if i > 0:
                h = run_block(self.up[i - 1], h, checkpoint=self.ckpt)
                if self.cfg.dmi == "feature" and i < len(maps):
                    h = self.dmi[i](h, torch.sigmoid(maps[i]))
                elif self.cfg.dmi != "none":  # the sketch itself (lean: no full-size content map)
                    h = self.dmi[i](h, 1 - sketch)  # lines (dark) → mask 1
            if self.style[i] is not None:
                h = self.style[i](h, style)
        return torch.tanh(self.to_rgb(h)) * 0.5 + 0.5


class SketchAutoEncoder(Pretrained, nn.Module):
    """The three trainable parts together; ``forward(sketch, style_image)`` → image in [0, 1]."""

    PART = "ae"
    FORMAT = AE_FORMAT
    FORMATS_READ = AE_FORMATS_READ
    CONFIG = AutoEncoderConfig

    def __init__(self, cfg: AutoEncoderConfig) -> None:
        """``cfg``: the network's settings (a training ``AEConfig`` is reduced to them)."""
        super().__init__()
        cfg = cfg.model_config()  # checked where it is made
        self.cfg = cfg
        self.style_encoder = StyleEncoder(cfg)
        self.content_encoder = ContentEncoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(
        self,
        sketch: torch.Tensor,
        style_image: torch.Tensor,
        *,
        original: torch.Tensor | None = None,
        other_sketch: torch.Tensor | None = None,
        cls_style: torch.Tensor | None = None,
        cls_sketch: torch.Tensor | None = None,
        features: bool = False,
    ):
        """Image in [0, 1]; with ``features`` a dict with what the self-supervised losses need too
        (``cls_style``/``cls_sketch``: the classification batch's style inputs and sketches, encoded only).

        Training goes through this one forward (not the sub-modules) so that a DDP wrapper sees it.
        """
        f_style = self.style_encoder(style_image)
        content = self.content_encoder(sketch)
        out = self.decoder(content, f_style, sketch)
        if not features:
            return out
        return {
            "out": out,
            "f_style": f_style,
            "content": content,
            "f_org": self.style_encoder(original) if original is not None else None,
            "f_pos": self.content_encoder(other_sketch) if other_sketch is not None else None,  # every level
            "f_cls": self.style_encoder(cls_style) if cls_style is not None else None,
            "content_cls": self.content_encoder(cls_sketch) if cls_sketch is not None else None,
        }

    @classmethod
    def config_from_file(cls, data: dict, fmt: str, header: dict[str, str], source: str) -> AutoEncoderConfig:
        if fmt != AE_FORMAT:  # format 1 saved the whole training config: its network fields are what count
            data = known_fields(AutoEncoderConfig, data)
        return from_dict(AutoEncoderConfig, data, source)

    def gradient_checkpointing(self, on: bool = True) -> SketchAutoEncoder:
        """Recompute blocks in backward instead of storing activations (less memory at 1024 px)."""
        for m in self.modules():
            if hasattr(m, "ckpt"):
                m.ckpt = on
        return self

    def parameter_counts(self) -> dict[str, int]:
        return {
            name: sum(p.numel() for p in m.parameters())
            for name, m in (("E_style", self.style_encoder), ("E_content", self.content_encoder), ("G1", self.decoder))
        }
