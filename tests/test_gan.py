import json

import pytest
import torch
from accelerate import Accelerator
from helpers import assert_same_training_state

from sketch2image.configs import AEConfig, GANConfig
from sketch2image.errors import CheckpointError
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.refiner import NoiseInjection, PatchDiscriminator, Refiner
from sketch2image.train.ema import ema_decay_at, ema_update
from sketch2image.train.gan import GANTrainer, train_gan


def tiny_gan(**kw) -> GANConfig:
    base = dict(
        width=8,
        max_width=16,
        levels=2,
        d_width=8,
        d_layers=2,
        batch_size=2,
        steps=4,
        sample_every=2,
        checkpoint_every=2,
        log_every=1,
    )
    return GANConfig(**{**base, **kw})


def tiny_refiner(**kw) -> Refiner:
    return Refiner(tiny_gan(**kw).model_config(32, style_dim=16))


@pytest.fixture
def ae_run(tmp_path):
    torch.manual_seed(0)
    cfg = AEConfig(size=32, width=8, max_width=32, style_dim=16, content_res=8)
    return SketchAutoEncoder(cfg.model_config()).save_pretrained(tmp_path / "ae" / "model").parent


@pytest.mark.parametrize("arch", ["lean", "classic"])
def test_refiner_and_discriminator_shapes(arch):
    g = tiny_refiner(arch=arch)
    x, s = torch.rand(2, 3, 32, 32), torch.randn(2, 16)
    y = g(x, s)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert PatchDiscriminator(8, 2).forward(y).shape == (2, 1, 8, 8)  # one logit per patch


@pytest.mark.parametrize("arch", ["lean", "classic"])
def test_refiner_uses_style_and_noise(arch):
    torch.manual_seed(0)
    g = tiny_refiner(arch=arch).eval()
    x0 = torch.rand(2, 3, 32, 32) * 0.9 + 0.05
    assert torch.allclose(g(x0, torch.randn(2, 16)), x0, atol=1e-5)  # identity on the AE output at start
    torch.nn.init.normal_(g.to_rgb.weight, std=0.1)
    for inj in g.style:
        torch.nn.init.normal_(inj.proj.weight)
    x, s = torch.rand(1, 3, 32, 32), torch.randn(1, 16)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(g(x, s, gen()), g(x, s, gen()))  # seeded noise: reproducible
    assert not torch.allclose(g(x, s, gen()), g(x, -s, gen()))  # the style vector matters
    base = g(x, s, gen())
    for n in g.noise:
        torch.nn.init.constant_(n.strength, 1.0)
    assert not torch.allclose(g(x, s, gen()), base)  # noise reaches the output once its strength is learnt
    assert not torch.allclose(g(x, s, gen()), g(x, s, torch.Generator().manual_seed(2)))
    off = tiny_refiner(noise=False, use_style=False)
    assert off.noise is None and off.style is None


def test_lean_refiner_keeps_full_resolution_work_small():
    """The lean layout's point: a fraction of the classic FLOPs, and still a full-resolution correction."""
    from torch.utils.flop_counter import FlopCounterMode

    x, s = torch.rand(1, 3, 64, 64), torch.randn(1, 16)
    flops = {}
    for arch in ("lean", "classic"):
        g = tiny_refiner(arch=arch, width=16, max_width=64, levels=3).eval()
        with FlopCounterMode(display=False) as fc:
            g(x, s)
        flops[arch] = fc.get_total_flops()
        torch.nn.init.normal_(g.to_rgb.weight, std=0.1)
        x.requires_grad_(True)
        g(x, s)[0, :, 7, 9].sum().backward()  # one output pixel depends on its own input pixel
        assert x.grad[0, :, 7, 9].abs().sum() > 0
        x = x.detach()
    assert flops["lean"] < flops["classic"] / 4


def test_noise_injection_starts_silent():
    h = torch.randn(2, 4, 5, 5)
    assert torch.equal(NoiseInjection(4)(h), h)


def test_ema_update_math():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight.detach())
    ema_update(a, b, 0.0)
    assert torch.allclose(a.weight, b.weight)


def test_trainer_updates_g_and_d_and_keeps_ae_frozen(ae_run, paired_manifest):
    from sketch2image.data.paired import PairedFiles

    ae = SketchAutoEncoder.from_pretrained(ae_run)
    ae_before = {k: v.clone() for k, v in ae.state_dict().items()}
    data = PairedFiles.from_manifest(paired_manifest, 32)
    trainer = GANTrainer(tiny_gan(ema_decay=0.5), ae, data, Accelerator(cpu=True))
    g0 = [p.detach().clone() for p in trainer.g.parameters()]
    d0 = [p.detach().clone() for p in trainer.d.parameters()]
    ema0 = [p.detach().clone() for p in trainer.g_ema.parameters()]
    losses = trainer.step(1)
    assert set(losses) == {"loss_d", "adv", "rec", "grad_d", "grad_g"}
    assert 0 < losses["grad_d"] < float("inf") and 0 < losses["grad_g"] < float("inf")
    assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.g.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, trainer.d.parameters(), strict=True))
    d = ema_decay_at(1, 0.5)  # the ramp: min(0.5, 2/11) at step 1
    for e0, e, g in zip(ema0, trainer.g_ema.parameters(), trainer.g.parameters(), strict=True):
        assert torch.allclose(e, d * e0 + (1 - d) * g.detach(), atol=1e-6)
    assert all(torch.equal(ae_before[k], v) for k, v in ae.state_dict().items())


def test_train_resume_and_load(tmp_path, ae_run, paired_manifest):
    run = tmp_path / "gan"
    train_gan(tiny_gan(), ae_run, paired_manifest, run, progress=False)
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert len(list((run / "samples").glob("*.png"))) == 2
    train_gan(tiny_gan(steps=6), ae_run, paired_manifest, run, progress=False)
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    whole = tmp_path / "whole"  # the uninterrupted run: G2, D, the EMA copy, both Adams, RNG, the data stream
    train_gan(tiny_gan(steps=6), ae_run, paired_manifest, whole, progress=False)
    assert_same_training_state(run, whole)
    refiner = Refiner.from_pretrained(run)
    assert not refiner.training
    assert refiner(torch.rand(1, 3, 32, 32), torch.randn(1, 16)).shape == (1, 3, 32, 32)
    (run / "model" / "refiner.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="refiner.safetensors"):
        Refiner.from_pretrained(run)
