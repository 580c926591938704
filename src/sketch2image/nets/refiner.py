"""Stage 3 networks (paper §4.2, appendix A.4): the refiner G2 and its patch discriminator.

G2 is a U-Net-style encoder–decoder from the frozen auto-encoder's output to the final
image. It also reads the style vector (a channel gate per decoder level, to recover style
detail the AE missed) and per-pixel noise at every decoder level (for fine texture).

``RefinerConfig.arch``: ``lean`` (default) halves with one strided conv from the first layer on, keeps a
residual block at the bottleneck, convolves before upsampling and adds the skip connections; the
only full-resolution work is the last upsampling, noise, style gate and the RGB conv. ``classic``
(the first implementation) runs two-conv blocks and concatenated skips at every level including
full size: about 15x the FLOPs at 1024 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sketch2image.errors import CheckpointError
from sketch2image.nets.blocks import ConvBlock, StyleInjection, lean_down, lean_up, run_block
from sketch2image.storage import REFINER_FORMAT, REFINER_FORMATS_READ, Checked, Pretrained, from_dict, known_fields


@dataclass
class RefinerLayout(Checked):
    """G2's layout, shared by the network's settings (``RefinerConfig``) and the training config
    (``configs.GANConfig``, where width and levels 0 mean "the AE size's preset")."""

    KIND: ClassVar[str] = "refiner layout"
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"arch": "classic"}  # files written before ``arch`` existed

    arch: str = "lean"  # lean | classic
    width: int = 32  # channels at full resolution (doubling per halving, <= max_width)
    max_width: int = 256
    levels: int = 3  # encoder-decoder depth: the bottleneck is size / 2**levels
    noise: bool = True  # per-pixel noise injected at every decoder level (learnt per-channel strength)
    use_style: bool = True  # the AE's style vector gates G2's decoder channels

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.arch not in ("lean", "classic"):
            problems.append(f"arch {self.arch!r} must be lean or classic")
        if self.max_width < 1:
            problems.append(f"max_width {self.max_width} must be >= 1")
        return problems


@dataclass
class RefinerConfig(RefinerLayout):
    """G2's settings (what ``config.json`` of a saved refiner holds); ``configs.GANConfig`` has the training
    settings and makes one of these for a given auto-encoder (``model_config``)."""

    KIND: ClassVar[str] = "refiner config"

    style_dim: int = 512  # the auto-encoder's style vector size

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.width < 1 or self.levels < 1 or self.style_dim < 1:
            problems.append("width, levels and style_dim must be >= 1")
        return problems


class NoiseInjection(nn.Module):
    """``h + s·n`` with n ~ N(0, 1) per pixel and a learnt per-channel strength s (0 at start)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(
        self, h: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        """``generator``: one for the batch, or one per sample (each output's noise then depends on its
        own seed only, not on its place in the batch). ``scale`` multiplies the learnt strength."""
        if isinstance(generator, (list, tuple)):
            noise = torch.cat([torch.randn(1, 1, *h.shape[2:], device=h.device, dtype=h.dtype, generator=g)
                               for g in generator])  # fmt: skip
        else:
            noise = torch.randn(h.shape[0], 1, *h.shape[2:], device=h.device, dtype=h.dtype, generator=generator)
        return h + (scale * self.strength) * noise


class Refiner(Pretrained, nn.Module):
    """G2: AE output (+ style vector, + noise) → refined image in [0, 1], as a residual on the AE output."""

    PART = "refiner"
    FORMAT = REFINER_FORMAT
    FORMATS_READ = REFINER_FORMATS_READ
    CONFIG = RefinerConfig

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ckpt = False  # recompute blocks in backward (gradient_checkpointing)
        style_dim = cfg.style_dim
        ch = [min(cfg.max_width, cfg.width * 2**i) for i in range(cfg.levels + 1)]  # ch[i] at 1/2**i
        if cfg.arch == "lean":  # skips at 1/2 ... 1/2**levels, added after each upsampling (none at full size)
            self.stem = nn.Identity()
            self.down = nn.ModuleList(
                lean_down(3 if i == 0 else ch[i], ch[i + 1], norm=i > 0, residual=i == cfg.levels - 1)
                for i in range(cfg.levels)
            )
            self.up = nn.ModuleList(lean_up(ch[i + 1], ch[i]) for i in reversed(range(cfg.levels)))
            self.fuse = None
        else:
            self.stem = ConvBlock(3, ch[0])
            self.down = nn.ModuleList(ConvBlock(ch[i], ch[i + 1], down=True) for i in range(cfg.levels))
            upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.up = nn.ModuleList(
                nn.Sequential(upsample, nn.Conv2d(ch[i + 1], ch[i], 3, padding=1)) for i in reversed(range(cfg.levels))
            )
            # after each upsampling the skip connection of the same level is concatenated
            self.fuse = nn.ModuleList(ConvBlock(2 * ch[i], ch[i]) for i in reversed(range(cfg.levels)))
        dec = [ch[cfg.levels]] + [ch[i] for i in reversed(range(cfg.levels))]  # decoder levels, coarse first
        self.noise = nn.ModuleList(NoiseInjection(c) for c in dec) if cfg.noise else None
        self.style = nn.ModuleList(StyleInjection(style_dim, c, "mul") for c in dec) if cfg.use_style else None
        # Residual in logit space, zero at start: G2 begins as the identity on the AE output and
        # learns only the correction, so a short training run can never end worse than the AE.
        self.to_rgb = nn.Conv2d(ch[0], 3, 3, padding=1)
        nn.init.zeros_(self.to_rgb.weight)
        nn.init.zeros_(self.to_rgb.bias)

    @classmethod
    def config_from_file(cls, data: dict, fmt: str, header: dict[str, str], source: str) -> RefinerConfig:
        if fmt != REFINER_FORMAT:  # format 1: the whole GANConfig, and the style size in the weights' header
            style_dim = header.get("style_dim", "")
            if not style_dim.isdigit():
                raise CheckpointError(f"{source}: a format-1 refiner needs style_dim in its weights' header")
            data = {**known_fields(RefinerConfig, data), "style_dim": int(style_dim)}
        return from_dict(RefinerConfig, data, source)

    def gradient_checkpointing(self, on: bool = True) -> Refiner:
        self.ckpt = on
        return self

    def _inject(self, i: int, h: torch.Tensor, style: torch.Tensor | None, generator, noise: float) -> torch.Tensor:
        if self.noise is not None and noise != 0:
            h = self.noise[i](h, generator, noise)
        if self.style is not None and style is not None:
            h = self.style[i](h, style)
        return h

    def forward(
        self,
        x_ae: torch.Tensor,
        style: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise: float = 1.0,
    ) -> torch.Tensor:
        """``noise`` scales the per-pixel noise: 1 as in training, 0 none (no random numbers drawn)."""
        ckpt = self.ckpt
        h = run_block(self.stem, x_ae, checkpoint=ckpt)
        skips = [] if self.fuse is None else [h]
        for block in self.down:
            h = run_block(block, h, checkpoint=ckpt)
            skips.append(h)
        h = self._inject(0, skips.pop(), style, generator, noise)
        for i, up in enumerate(self.up):
            h = run_block(up, h, checkpoint=ckpt)
            if self.fuse is None:  # lean: add the skip (there is none at full size)
                h = h + skips.pop() if skips else h
            else:
                h = run_block(self.fuse[i], torch.cat([h, skips.pop()], dim=1), checkpoint=ckpt)
            h = self._inject(i + 1, h, style, generator, noise)
        return torch.sigmoid(torch.logit(x_ae.clamp(1e-3, 1 - 1e-3)) + self.to_rgb(h))


class PatchDiscriminator(nn.Module):
    """Strided spectral-norm convolutions to a map of real/fake logits, one per patch."""

    def __init__(self, width: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i in range(n_layers):
            cout = min(width * 2**i, 512)
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers += [
            spectral_norm(nn.Conv2d(cin, cin, 3, padding=1)),
            nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Conv2d(cin, 1, 3, padding=1)),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image * 2 - 1)
