"""TOM ("Train Once, get Multiple transfers"): the sketch generator and the Gram discriminator.

``SketchGenerator`` decodes one VGG feature map of an RGB image back to a one-channel line
sketch (white background = 1, dark lines = 0). ``GramDiscriminator`` never sees pixels: it
judges the Gram matrices of VGG features of a sketch, i.e. stroke statistics, not layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from sketch2image.nets.vgg import CHANNELS, LAYER_NAMES, layer_stride
from sketch2image.storage import Checked


@dataclass
class SketchGeneratorConfig(Checked):
    """A snapshot generator's settings; ``configs.TOMConfig`` extends them with how TOM is trained."""

    KIND: ClassVar[str] = "sketch generator config"

    feature_layer: str = "relu3_1"  # G reads this VGG layer; the AdaIN feature target lives here too
    g_width: int = 32
    g_max_width: int = 256

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.feature_layer not in LAYER_NAMES:
            problems.append(f"feature_layer {self.feature_layer!r} not in {LAYER_NAMES}")
        if self.g_width < 1 or self.g_max_width < 1:
            problems.append("g_width and g_max_width must be >= 1")
        return problems


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")


class SketchGenerator(nn.Module):
    """VGG feature map → sketch, AdaIN-decoder style: reflect-padded convs, ReLU, nearest upsampling.

    No normalisation layers, so every saved snapshot behaves the same in train and eval mode.
    """

    def __init__(self, feature_layer: str = "relu3_1", width: int = 64, max_width: int = 256) -> None:
        super().__init__()
        levels = int(math.log2(layer_stride(feature_layer)))
        widths = [min(width * 2**i, max_width) for i in range(levels + 1)]  # widths[i] at 1/2**i scale
        layers: list[nn.Module] = [_conv(CHANNELS[feature_layer], widths[levels]), nn.ReLU(inplace=True)]
        for i in range(levels, 0, -1):
            layers += [
                _conv(widths[i], widths[i]),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2.0),
                _conv(widths[i], widths[i - 1]),
                nn.ReLU(inplace=True),
            ]
        layers += [_conv(widths[0], widths[0]), nn.ReLU(inplace=True), _conv(widths[0], 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(features))


class _GramHead(nn.Module):
    """Judges one layer's Gram matrix through learnt bilinear forms uᵀ·G·v.

    Each form is a second moment of two learnt projections of the feature map, so the head
    sees exactly stroke statistics, at O(C·k) parameters instead of O(C²) for a flat MLP.

    ``norm="spectral"``: u and v are unit directions and the MLP's layers are spectrally
    normalised, so the logit is 1-Lipschitz in the log-energies along those directions. An
    unconstrained head (``"none"``, the first version) can scale u and its MLP without bound; on
    face photos its logits ran to -10 and its quadratic forms lost their sign to rounding.
    """

    def __init__(self, channels: int, forms: int, hidden: int, norm: str = "spectral") -> None:
        super().__init__()
        self.unit = norm == "spectral"
        self.u = nn.Parameter(torch.randn(channels, forms) / math.sqrt(channels))
        self.v = nn.Parameter(torch.randn(channels, forms) / math.sqrt(channels))
        layers = [nn.Linear(2 * forms, hidden), nn.Linear(hidden, 1)]
        if self.unit:
            layers = [spectral_norm(m) for m in layers]
        self.mlp = nn.Sequential(layers[0], nn.LeakyReLU(0.2), layers[1])

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        u, v = (F.normalize(self.u, dim=0), F.normalize(self.v, dim=0)) if self.unit else (self.u, self.v)
        gu = g @ u  # (B, C, k)
        quad = (u * gu).sum(1)  # uᵀGu ≥ 0: energy along u
        cross = (v * gu).sum(1)  # vᵀGu: co-activation
        # uᵀGu >= 0 for a Gram matrix, but rounding can make it slightly negative: clamp before the log.
        x = torch.cat([torch.log(quad.clamp_min(0) + 1e-4), torch.asinh(cross)], dim=1)
        return self.mlp(x)


class GramDiscriminator(nn.Module):
    """Sum of per-layer logits over the Gram matrices of several VGG layers."""

    def __init__(
        self,
        layers: tuple[str, ...] = ("relu2_1", "relu3_1", "relu4_1"),
        forms: int = 128,
        hidden: int = 256,
        norm: str = "spectral",
    ) -> None:
        super().__init__()
        if norm not in ("spectral", "none"):
            raise ValueError(f"norm {norm!r} must be 'spectral' or 'none'")
        self.layers = tuple(layers)
        self.heads = nn.ModuleDict({name: _GramHead(CHANNELS[name], forms, hidden, norm) for name in self.layers})

    def forward(self, grams: dict[str, torch.Tensor]) -> torch.Tensor:
        # float32 throughout, under any autocast: logs of quadratic forms of Gram matrices whose entries
        # reach 1e4 lose their sign in bf16.
        device = next(iter(grams.values())).device.type
        with torch.autocast(device, enabled=False):
            logits = [self.heads[name](grams[name].float()) for name in self.layers]
        return torch.stack(logits, 0).sum(0).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def binarize(sketch: torch.Tensor, threshold: float) -> torch.Tensor:
    """Hard lines: pixels darker than ``threshold`` become 0, the rest 1."""
    return (sketch >= threshold).to(sketch.dtype)
