import pytest
import torch

from sketch2image.losses import adain, d_loss, g_adv_loss, gram, mean_std


def test_gram_matches_hand_computation():
    # two channels over 2x2 positions
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])
    g = gram(f)
    # <a,a>=30, <a,b>=2-4=-2, <b,b>=2 ; divided by 4 positions
    assert torch.allclose(g, torch.tensor([[[7.5, -0.5], [-0.5, 0.5]]]))


def test_gram_is_size_independent_for_tiled_features():
    f = torch.randn(2, 3, 4, 4)
    assert torch.allclose(gram(f), gram(f.repeat(1, 1, 2, 2)), atol=1e-5)


def test_mean_std_population():
    f = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    m, s = mean_std(f, eps=0.0)
    assert m.item() == pytest.approx(4.0)
    assert s.item() == pytest.approx(5.0**0.5)  # population variance: (9+1+1+9)/4


def test_adain_transfers_statistics():
    c = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])  # mean 3, std sqrt(5)
    out = adain(c, torch.tensor(10.0).view(1, 1, 1, 1), torch.tensor(2.0).view(1, 1, 1, 1))
    expected = 2.0 * (c - 3.0) / (5.0 + 1e-5) ** 0.5 + 10.0
    assert torch.allclose(out, expected)
    m, s = mean_std(out, eps=0.0)
    assert m.item() == pytest.approx(10.0, abs=1e-4) and s.item() == pytest.approx(2.0, abs=1e-3)


def test_gan_losses_hand_values():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    sp = torch.nn.functional.softplus
    assert d_loss(real, fake, "bce").item() == pytest.approx((sp(torch.tensor(-2.0)) + sp(torch.tensor(-1.0))).item())
    assert d_loss(real, fake, "hinge").item() == pytest.approx(0.0)  # both beyond the margin
    assert d_loss(torch.tensor([0.5]), torch.tensor([0.5]), "hinge").item() == pytest.approx(0.5 + 1.5)
    assert g_adv_loss(fake, "bce").item() == pytest.approx(sp(torch.tensor(1.0)).item())
    assert g_adv_loss(fake, "hinge").item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        d_loss(real, fake, "wgan")
