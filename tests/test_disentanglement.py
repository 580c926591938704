"""The three metrics that see disentanglement, on constructed models whose answer is known:
one that copies the style image, one that ignores it, and one that takes only its palette."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sketch2image.metrics import functional as M
from sketch2image.metrics.evaluate import evaluate

METRICS = ["style_follow", "content_leak", "style_sensitivity"]


class Edges(nn.Module):
    """A stand-in TOM: dark lines where the grey image has edges, (B, 1, H, W) in [0, 1]."""

    def forward(self, x: torch.Tensor, snapshot: int | None = None) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        kx = torch.tensor([[[[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]]])
        mag = F.conv2d(g, kx, padding=1).abs() + F.conv2d(g, kx.transpose(2, 3), padding=1).abs()
        return 1 - (mag * 4).clamp(0, 1)


class Copier:
    """Paints the style image itself: follows the style, and all of its edges leak."""

    def __init__(self) -> None:
        self.device, self.tom = torch.device("cpu"), Edges()

    def style_vectors(self, styles: torch.Tensor) -> torch.Tensor:
        return styles

    def decode(self, sketches: torch.Tensor, styles: torch.Tensor, refine: bool = True) -> torch.Tensor:
        return styles


class Ignorer(Copier):
    """Draws the sketch in grey whatever the style."""

    def decode(self, sketches, styles, refine=True):
        return sketches.expand(-1, 3, -1, -1)


class Palette(Copier):
    """The ideal: the sketch's layout in the style image's colour mean and spread, none of its edges."""

    def style_vectors(self, styles):
        return M.colour_stats(styles)

    def decode(self, sketches, styles, refine=True):
        z = (sketches - sketches.mean((2, 3), keepdim=True)) / (sketches.std((2, 3), keepdim=True) + 1e-5)
        mean, std = styles[:, :3, None, None], styles[:, 3:, None, None]
        return (mean + std * z).clamp(0, 1)


@pytest.fixture(scope="module")
def pairs():
    """Smooth random images, each with its own palette, and their stand-in sketches."""
    g = torch.Generator().manual_seed(0)
    n = 48
    layout = F.interpolate(torch.rand(n, 1, 6, 6, generator=g), size=32, mode="bilinear")
    tint = torch.rand(n, 3, 1, 1, generator=g)
    images = (0.2 + 0.6 * tint) * (0.5 + layout) / 1.5
    return images, Edges()(images)


def _scores(model, pairs) -> dict[str, float]:
    report = evaluate(model, *pairs, METRICS, batch_size=8, progress=False)
    return {k: v["value"] for k, v in report["metrics"].items()}


def test_a_model_that_copies_the_style_image_leaks_and_follows(pairs):
    copier, ignorer = _scores(Copier(), pairs), _scores(Ignorer(), pairs)
    assert copier["content_leak"] > 0.3
    assert abs(ignorer["content_leak"]) < copier["content_leak"] / 4
    assert copier["style_follow"] < 0  # it is the style image


def test_a_model_that_ignores_the_style_has_zero_sensitivity(pairs):
    assert _scores(Ignorer(), pairs)["style_sensitivity"] == 0.0
    assert _scores(Copier(), pairs)["style_sensitivity"] > 0.02


def test_a_palette_model_follows_the_style_without_leaking(pairs):
    palette, copier = _scores(Palette(), pairs), _scores(Copier(), pairs)
    assert palette["style_follow"] < 0 and palette["style_sensitivity"] > 0
    assert palette["content_leak"] < copier["content_leak"] / 4


def test_style_follow_prefers_the_palette_it_was_given():
    own, style = torch.full((2, 3, 8, 8), 0.2), torch.full((2, 3, 8, 8), 0.8)
    assert (M.style_follow(style.clone(), style, own) < 0).all()
    assert (M.style_follow(own.clone(), style, own) > 0).all()


def test_the_third_image_is_never_the_rows_own_or_its_style():
    from sketch2image.errors import InputError
    from sketch2image.metrics.evaluate import derangement, third_images

    for n in (3, 4, 8, 30, 61):  # 8 and 30 once gave the own image (a 2-cycle read twice)
        d, t, rows = derangement(n, 0), third_images(n, 0), torch.arange(n)
        assert (t != rows).all() and (t != d).all() and sorted(t.tolist()) == list(range(n))
    with pytest.raises(InputError, match="at least 3"):
        evaluate(Copier(), torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), ["content_leak"], progress=False)
