"""The self-supervision acts: the classifier learns within a round, the MI term has a meaningful size,
Feat-DMI's masks get gradient from step 1, the EMA refiner follows G2, refined outputs are seeded."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from sketch2image.configs import AEConfig, GANConfig, from_dict, to_dict
from sketch2image.data.paired import PairedData
from sketch2image.errors import S2IError
from sketch2image.losses import refiner_rec, uniform_kl, uniform_prediction_loss
from sketch2image.nets.blocks import DualMaskInjection
from sketch2image.options import LOSSES
from sketch2image.train.ae import AETrainer
from sketch2image.train.ema import ema_decay_at, ema_update


def _tiny_ae(**kw) -> AEConfig:
    base = dict(size=32, width=8, max_width=32, style_dim=16, content_res=8, batch_size=8, steps=4, **LOSSES["paper"])
    return AEConfig(**{**base, **kw})


def _distinct_images(n: int = 16, k: int = 2, size: int = 32) -> PairedData:
    """n images that differ in colour layout (so a style encoder can tell them apart), line sketches."""
    g = torch.Generator().manual_seed(3)
    low = torch.rand(n, 3, 2, 2, generator=g)
    images = (torch.nn.functional.interpolate(low, size=size, mode="nearest") * 255).to(torch.uint8)
    sketches = torch.full((n, k, size, size), 255, dtype=torch.uint8)
    sketches[:, :, size // 2, 4:-4] = 0
    sketches[:, :, 4:-4, size // 2] = 0
    return PairedData([f"i{i}" for i in range(n)], images, sketches)


def _sized(n: int) -> PairedData:
    """n pairs without the memory: every row is a view of one zero image."""
    return PairedData([f"i{i}" for i in range(n)], torch.zeros(1, 3, 32, 32, dtype=torch.uint8).expand(n, -1, -1, -1),
                      torch.zeros(1, 2, 32, 32, dtype=torch.uint8).expand(n, -1, -1, -1))  # fmt: skip


def test_round_length_follows_views_batch_and_dataset():
    acc = Accelerator(cpu=True)
    assert AETrainer(_tiny_ae(cls_k=256, cls_views=24, batch_size=16), _sized(10_000), acc).round_steps == 384
    assert AETrainer(_tiny_ae(cls_k=256, cls_views=24, batch_size=32), _sized(10_000), acc).round_steps == 192
    assert AETrainer(_tiny_ae(cls_k=256, cls_views=24, batch_size=8), _sized(40), acc).round_steps == 120  # k = 40
    assert AETrainer(_tiny_ae(cls_every=7), _sized(40), acc).round_steps == 7  # a fixed count still works


def test_the_head_beats_chance_by_the_end_of_a_round():
    torch.manual_seed(0)
    data = _distinct_images(16)
    trainer = AETrainer(
        _tiny_ae(cls_k=16, cls_views=40, w_content_triplet=0, w_style_cls=1.0), data, Accelerator(cpu=True)
    )
    assert trainer.round_steps == 80
    log = [trainer.step(s) for s in range(1, trainer.round_steps + 1)]
    assert trainer.round == 0
    chance = 1 / 16
    assert log[-1]["cls_acc"] > 5 * chance  # 16 classes: chance 6 %; the round ends at ~45 %
    assert log[-1]["style_cls"] < 0.8 * math.log(16)  # and the loss clearly below ln k
    trainer.step(trainer.round_steps + 1)  # a new round: fresh head, accuracy restarts
    assert trainer.round == 1 and len(trainer.round_acc) == 1


def test_content_mi_has_a_meaningful_size():
    uniform, peaked = torch.zeros(4, 256), torch.zeros(4, 256)
    peaked[:, 0] = 10.0
    assert uniform_kl(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert uniform_kl(peaked).item() > 1.0  # nats: comparable to a cross-entropy
    assert uniform_prediction_loss(peaked).item() < uniform_kl(peaked).item() / 5  # the paper's MSE is tiny
    logits = torch.randn(8, 256) * 0.3
    logits.requires_grad_(True)
    uniform_kl(logits).backward()
    g_kl = logits.grad.norm()
    logits.grad = None
    uniform_prediction_loss(logits).backward()
    assert g_kl > 20 * logits.grad.norm()  # at k = 256 the MSE barely moves anything


def test_mi_without_classification_still_trains_the_head():
    torch.manual_seed(0)
    data = _distinct_images(16)
    cfg = _tiny_ae(cls_k=16, cls_views=10, w_style_cls=0, w_content_mi=1.0, w_content_triplet=0)
    trainer = AETrainer(cfg, data, Accelerator(cpu=True))
    w0 = trainer.head.weight.detach().clone()
    style0 = [p.detach().clone() for p in trainer.model.style_encoder.parameters()]
    terms = trainer.losses(*trainer.batch(1))
    assert "cls_head" in terms and "style_cls" not in terms
    trainer.model.zero_grad()
    terms["cls_head"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trainer.model.style_encoder.parameters())
    trainer.step(2)
    assert not torch.equal(trainer.head.weight.detach(), w0)  # the head learns the round's classes
    assert any(not torch.equal(a, b) for a, b in zip(style0, trainer.model.style_encoder.parameters(), strict=True))


def test_old_configs_keep_the_paper_mse():
    old = {k: v for k, v in to_dict(AEConfig()).items() if k not in ("content_mi_form", "cls_views")}
    assert from_dict(AEConfig, old).content_mi_form == "mse"
    assert AEConfig().content_mi_form == "kl"


def test_configs_written_before_fair_sampling_keep_their_training():
    """A run folder from before epoch sampling, all-level constraints, probes and the rgb reconstruction
    resumes as it was trained."""
    new = ("rec_form", "sampling", "content_levels", "mi_probe", "grad_norm_every")
    old = from_dict(AEConfig, {k: v for k, v in to_dict(AEConfig()).items() if k not in new})
    assert (old.rec_form, old.sampling, old.content_levels, old.mi_probe) == ("mse", "subset", "last", "style_head")
    now = AEConfig()
    assert (now.rec_form, now.sampling, now.content_levels, now.mi_probe) == ("rgb", "epoch", "all", "probe")


def test_feat_dmi_masks_get_gradient_from_the_first_step():
    dmi = DualMaskInjection(4)
    h = torch.randn(2, 4, 8, 8)
    m = torch.full((2, 4, 8, 8), 0.5, requires_grad=True)
    out = dmi(h, m)
    assert torch.allclose(out, h, atol=1e-6)  # identity at m = 0.5 ...
    assert (dmi(h, torch.ones_like(m)) - h).abs().max() <= 0.1 * h.abs().max() + 1e-6  # ... and close to it anywhere
    out.square().sum().backward()
    assert m.grad.abs().mean() > 1e-3  # (a1 - a2)·h ≠ 0
    same = DualMaskInjection(4, spread=0.0)
    m2 = m.detach().clone().requires_grad_(True)
    same(h, m2).square().sum().backward()
    assert m2.grad.abs().max() == 0  # what equal a1 = a2 gave: no gradient to the masks


def test_refiner_reconstruction_is_the_squared_colour_distance():
    real = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    fake = real.clone()
    fake[0, :, 1, 2] += 0.25  # one pixel off by a quarter in every channel: 3·0.5² in [−1, 1] over 32 pixels
    assert refiner_rec(fake, real).item() == pytest.approx(3 * 0.5**2 / 32)
    noisy = torch.rand_like(real)
    assert refiner_rec(noisy, real).item() == pytest.approx(12 * refiner_rec(noisy, real, "mse").item())
    with pytest.raises(ValueError):
        refiner_rec(fake, real, "l1")


def test_old_gan_configs_keep_their_reconstruction_scale():
    old = {k: v for k, v in to_dict(GANConfig()).items() if k != "rec_form"}
    assert from_dict(GANConfig, old).rec_form == "mse" and GANConfig().rec_form == "rgb"
    with pytest.raises(S2IError, match="rec_form"):
        GANConfig(rec_form="l2")  # refused where it is made


# --- the EMA refiner and its seeds -------------------------------------------------------------------


def test_ema_ramp():
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(10_000, 0.999) == 0.999
    assert ema_decay_at(1, 0.999, ramp=False) == 0.999
    ema, live = torch.nn.Linear(3, 3).double(), torch.nn.Linear(3, 3).double()
    with torch.no_grad():
        ema.weight.zero_()
        live.weight.fill_(1.0)
    kept = 1.0
    for t in range(1, 4):  # a live generator that has moved away from the initialisation
        ema_update(ema, live, ema_decay_at(t, 0.999))
        kept *= ema_decay_at(t, 0.999)
    distance = (live.weight - ema.weight).abs().max().item()
    assert distance == pytest.approx(kept, rel=1e-9) and kept == pytest.approx(2 / 11 * 3 / 12 * 4 / 13)
    share_of_init = math.prod(ema_decay_at(t, 0.999) for t in range(1, 501))
    assert share_of_init < 1e-6 and 0.999**500 > 0.6  # after the demo's 500 steps: 61 % init before, ~0 now


def test_exported_refiner_is_the_ema(tmp_path, paired_manifest):
    from sketch2image.nets.autoencoder import SketchAutoEncoder
    from sketch2image.nets.refiner import Refiner
    from sketch2image.storage import load_tensors
    from sketch2image.train.gan import train_gan

    torch.manual_seed(0)
    ae_cfg = AEConfig(size=32, width=8, max_width=32, style_dim=16, content_res=8)
    SketchAutoEncoder(ae_cfg.model_config()).save_pretrained(tmp_path / "ae" / "model")
    cfg = GANConfig(width=8, max_width=16, levels=2, d_width=8, d_layers=2, batch_size=2, steps=6,
                    checkpoint_every=6, sample_every=6)  # fmt: skip
    run = train_gan(cfg, tmp_path / "ae", paired_manifest, tmp_path / "gan", progress=False)
    state = load_tensors(run / "checkpoints" / "step_0000006" / "state.safetensors")
    exported = Refiner.from_pretrained(run).state_dict()
    for k, v in exported.items():
        assert torch.equal(v, state[f"g_ema.{k}"])
    assert any(not torch.equal(state[f"g_ema.{k}"], state[f"g.{k}"]) for k in exported)  # an average, not G2


def test_refined_outputs_are_seeded(model_dir, tmp_path):
    from helpers import sketch_png

    from sketch2image.pipeline import Sketch2Image

    model = Sketch2Image.from_pretrained(model_dir)
    with torch.no_grad():
        for noise in model.refiner.noise:
            noise.strength.fill_(0.5)  # trained noise strengths: the pictures now depend on the noise
    sk = sketch_png(tmp_path / "s.png")
    style = torch.rand(3, 40, 40)
    # by default the noise is off: the seed changes nothing, and the picture is the noise-free refiner's
    quiet = model.generate(sk, style).stack()
    assert torch.equal(quiet, model.generate(sk, style, seed=7).stack()) and torch.equal(
        quiet, model.generate(sk, style, seed=None).stack()
    )
    assert (quiet - model.generate(sk, style, noise=1.0).stack()).abs().max() > 1e-2
    model.noise = 1.0  # as in training
    a, b = model.generate(sk, style).stack(), model.generate(sk, style).stack()
    assert torch.equal(a, b)  # deterministic by default
    assert (a - model.generate(sk, style, seed=1).stack()).abs().max() > 1e-2  # another seed, another picture
    unseeded = [model.generate(sk, style, seed=None).stack() for _ in range(2)]
    assert (unseeded[0] - unseeded[1]).abs().max() > 1e-2
    pair = model.generate([sk, sk], style)  # output i uses seed + i, whatever the batch (up to float rounding)
    torch.testing.assert_close(pair[0], a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair[1], model.generate(sk, style, seed=1)[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(model.mix(sk, [style, style]).stack(), model.mix(sk, [style, style]).stack())
