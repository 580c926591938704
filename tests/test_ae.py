import json
import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch.nn import functional as F

from sketch2image.configs import AEConfig, to_dict
from sketch2image.data.augment import mask_regions, random_affine, thicken
from sketch2image.data.paired import PairedData, PairedFiles
from sketch2image.errors import InputError, S2IError
from sketch2image.losses import content_triplet, standardise, style_triplet, uniform_kl, uniform_prediction_loss
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.blocks import DualMaskInjection, StyleInjection
from sketch2image.options import LOSSES
from sketch2image.train.ae import AETrainer, train_ae


def tiny(**kw) -> AEConfig:
    base = dict(
        size=32,
        width=8,
        max_width=32,
        style_dim=16,
        content_res=8,
        cls_k=8,
        cls_every=5,
        batch_size=4,
        steps=4,
        sample_every=2,
        checkpoint_every=2,
        log_every=1,
        **LOSSES["paper"],  # every term, so each test exercises them all
    )
    return AEConfig(**{**base, **kw})


def fake_data(n=10, k=3, size=32) -> PairedData:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 4, 4, generator=g)  # smooth colour fields, like real images
    images = (torch.nn.functional.interpolate(low, size=size, mode="bilinear") * 255).to(torch.uint8)
    sketches = torch.where(torch.rand(n, k, size, size, generator=g) < 0.1, 0, 255).to(torch.uint8)
    return PairedData([f"id{i}" for i in range(n)], images, sketches)


# --- losses: hand-computed values ---------------------------------------------------------------


def test_style_triplet_values():
    t = torch.tensor([[1.0, 0.0]])
    same, orth, opposite = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]])
    assert style_triplet(t, same, orth, 0.5).item() == pytest.approx(0.0)  # 0 - 1 + 0.5 < 0
    assert style_triplet(t, orth, same, 0.5).item() == pytest.approx(1.5)  # 1 - 0 + 0.5
    assert style_triplet(t, orth, opposite, 0.5).item() == pytest.approx(0.0)  # -1 - 0 + 0.5


def test_content_triplet_and_standardise():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert standardise(a).mean().item() == pytest.approx(0.0, abs=1e-6)
    assert standardise(a * 10 + 3).allclose(standardise(a), atol=1e-4)  # scale-free margin
    neg = torch.tensor([[4.0, 3.0, 2.0, 1.0]])  # standardised: exactly -a
    # d(a, a) = 0, d(a, -a) = mean((2 sa)^2) = 4 * var-normalised = 4*(n-1)/n with unbiased std
    d_neg = (2 * standardise(a)).pow(2).mean().item()
    assert content_triplet(a, a, neg, 0.5).item() == pytest.approx(max(0.0, 0 - d_neg + 0.5))
    assert content_triplet(a, neg, a, 0.5).item() == pytest.approx(d_neg + 0.5, rel=1e-4)


def test_uniform_prediction_loss_values():
    assert uniform_prediction_loss(torch.zeros(2, 4)).item() == pytest.approx(0.0)
    one_hot = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    assert uniform_prediction_loss(one_hot).item() == pytest.approx(0.75**2 + 3 * 0.25**2, rel=1e-4)


# --- which parameters each loss reaches ---------------------------------------------------------


def _reached(trainer: AETrainer, term: str) -> set[str]:
    images, sketches, plan = trainer.batch(1)
    for p in [*trainer.model.parameters(), *trainer.head.parameters(), *trainer.probes.parameters()]:
        p.grad = None
    trainer.losses(images, sketches, plan)[term].backward()
    parts = {"style_encoder": "E_style", "content_encoder": "E_content", "decoder": "G1"}
    hit = set()
    for name, p in trainer.model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            hit.add(parts[name.split(".")[0]])
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.head.parameters()):
        hit.add("head")
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.probes.parameters()):
        hit.add("probes")
    return hit


@pytest.mark.parametrize(
    "term, expected",
    [
        ("rec", {"E_style", "E_content", "G1"}),
        ("style_triplet", {"E_style"}),
        ("content_triplet", {"E_content"}),
        ("style_cls", {"E_style", "head"}),
        ("content_mi", {"E_content"}),  # never the head or the probes
        ("mi_probe", {"probes"}),  # the probes learn on detached content
    ],
)
def test_gradient_reach(term, expected):
    torch.manual_seed(0)
    trainer = AETrainer(tiny(), fake_data(), Accelerator(cpu=True))
    assert _reached(trainer, term) == expected


# --- the building blocks and the ablation switches -----------------------------------------------


def test_dmi_is_near_identity_at_init_and_masks_split_the_map():
    dmi = DualMaskInjection(3)
    h, m = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    assert torch.allclose(dmi(h, torch.full_like(m, 0.5)), h, atol=1e-6)
    assert ((dmi(h, m) - h).abs() <= 0.1 * h.abs() + 1e-6).all()  # within ±10 % for any mask (test_selfsup.py)
    with torch.no_grad():
        dmi.a1.fill_(2.0)
        dmi.a2.fill_(1.0)
    assert torch.allclose(dmi(h, torch.ones_like(m)), 2 * h) and torch.allclose(dmi(h, torch.zeros_like(m)), h)


def test_style_injection_variants():
    s = torch.randn(2, 5)
    h = torch.randn(2, 3, 4, 4)
    for mode in ("mul", "add", "adain"):
        inj = StyleInjection(5, 3, mode)
        torch.nn.init.normal_(inj.proj.weight)
        assert not torch.allclose(inj(h, s), inj(h, s.flip(0)))  # the style matters in every mode
        if mode == "mul":
            assert torch.equal(inj(torch.zeros_like(h), s), torch.zeros_like(h))  # a pure gate, no shift
        if mode == "add":
            assert torch.allclose(inj(h, s) - h, inj(torch.zeros_like(h), s))
        if mode == "adain":
            assert torch.allclose(inj(h * 3 + 1, s), inj(h, s), atol=1e-4)  # instance-normalised first


@pytest.mark.parametrize("arch", ["lean", "classic"])
def test_dmi_switch_changes_what_the_decoder_reads(arch):
    torch.manual_seed(0)
    sk, st = (torch.rand(2, 1, 32, 32) > 0.9).float(), torch.rand(2, 3, 32, 32)
    outs = {}
    for dmi in ("none", "sketch", "feature"):
        torch.manual_seed(1)
        m = SketchAutoEncoder(tiny(dmi=dmi, arch=arch).model_config()).eval()
        for mod in m.decoder.dmi:
            if isinstance(mod, DualMaskInjection):
                torch.nn.init.normal_(mod.a1)
        content, style = m.content_encoder(sk), m.style_encoder(st)
        base = m.decoder(content, style, sk)
        high_res_changed = [content[0] + 1, *content[1:]]
        outs[dmi] = (
            not torch.allclose(base, m.decoder(high_res_changed, style, sk)),  # reads high-res content maps
            not torch.allclose(base, m.decoder(content, style, 1 - sk)),  # reads the raw sketch
        )
    # Lean Feat-DMI has no full-size content map: its full-size level reads the sketch itself.
    feature = (True, arch == "lean")
    assert outs == {"none": (False, False), "sketch": (False, True), "feature": feature}


def test_loss_switches_remove_terms():
    torch.manual_seed(0)
    full = AETrainer(tiny(), fake_data(), Accelerator(cpu=True))
    vanilla = AETrainer(
        tiny(w_style_triplet=0, w_content_triplet=0, w_style_cls=0, w_content_mi=0), fake_data(), Accelerator(cpu=True)
    )
    assert set(full.losses(*full.batch(1))) == {
        "rec",
        "style_triplet",
        "content_triplet",
        "style_cls",
        "content_mi",
        "mi_probe",
    }
    x, s, plan = vanilla.batch(1)
    assert s.shape[1] == 1  # without the content triplet a step decodes one sketch per image
    assert set(vanilla.losses(x, s, plan)) == {"rec"}
    assert not vanilla.uses_classes


def test_momentum_subset_rounds():
    trainer = AETrainer(tiny(cls_k=4, cls_every=3), fake_data(20), Accelerator(cpu=True))
    trainer.batch(1)
    first, head0 = trainer.subset.clone(), trainer.head.weight.detach().clone()
    trainer.opt_head.state[trainer.head.weight] = {"dummy": torch.zeros(1)}
    for step in (2, 3):
        _, _, plan = trainer.batch(step)
        cls_rows, labels = plan.index[4:], plan.rand["labels"]  # after the 4 reconstruction rows
        assert torch.equal(trainer.subset, first)
        assert torch.equal(cls_rows, first[labels]) and labels.max() < 4  # labels are positions in the subset
    trainer.batch(4)  # a new round: the next k-block of the same shuffled pass
    assert trainer.round == 1 and len(trainer.subset) == 4
    assert not set(trainer.subset.tolist()) & set(first.tolist())
    assert not torch.equal(trainer.head.weight.detach(), head0)
    assert len(trainer.opt_head.state) == 0
    again = AETrainer(tiny(cls_k=4, cls_every=3), fake_data(20), Accelerator(cpu=True))
    again.start_round(1)
    assert torch.equal(again.subset, trainer.subset)  # deterministic: same subset on every rank/resume


@pytest.mark.parametrize("n", [20, 22])
def test_every_image_is_reconstructed_and_classified_once_per_pass(n):
    """Reconstruction rows: consecutive batches of shuffled passes over all n images; classification subsets:
    k-blocks of a shuffled pass, so ceil(n / k) rounds put every image in a subset."""
    trainer = AETrainer(tiny(cls_k=4, cls_every=1), fake_data(n), Accelerator(cpu=True))
    plan = trainer.planner({"data_gen": torch.Generator().manual_seed(0), "aug_gen": torch.Generator()})
    b, passes = 4, 3
    rec = torch.cat([plan(step).index[:b] for step in range(1, passes * n // b + 1)])
    for p in range(passes * n // b * b // n):
        assert sorted(rec[p * n : (p + 1) * n].tolist()) == list(range(n))  # each image once per pass
    blocks = -(-n // 4)
    subsets = [trainer.round_draw(r)[0] for r in range(blocks)]
    assert set(torch.cat(subsets).tolist()) == set(range(n))
    assert all(len(set(s.tolist())) == 4 for s in subsets)
    assert not torch.equal(trainer.pass_order(0)[:4], trainer.round_draw(0)[0])  # independent streams at seed 0
    few = AETrainer(tiny(w_style_cls=0, w_content_mi=0, batch_size=4), fake_data(3), Accelerator(cpu=True))
    plan3 = few.planner({"data_gen": torch.Generator(), "aug_gen": torch.Generator()})
    rows = torch.cat([plan3(step).index for step in (1, 2, 3)])  # batches larger than the set span passes
    assert [sorted(rows[i : i + 3].tolist()) for i in range(0, 12, 3)] == [[0, 1, 2]] * 4
    old = AETrainer(tiny(cls_k=4, cls_every=1, sampling="subset"), fake_data(n), Accelerator(cpu=True))
    seen = set(torch.cat([old.round_draw(r)[0] for r in range(blocks)]).tolist())
    assert len(seen) < n  # what the independent draws missed (seeded, so this does not flake)


def test_the_content_probe_finds_a_class_hidden_in_the_style_heads_null_space():
    """Pooled content that encodes the class only in directions the style classifier cannot see: that head
    reads no information (MI 0), a probe trained on the content does."""
    from sketch2image.train.ae import ContentProbes

    torch.manual_seed(0)
    k, d = 4, 8
    head = torch.nn.Linear(d, k)
    with torch.no_grad():
        head.weight[:, k:] = 0  # the head sees only the first k dimensions
        head.bias.zero_()
    labels = torch.arange(k).repeat(8)
    content = torch.zeros(len(labels), d, 2, 2)
    content[torch.arange(len(labels)), k + labels] = 3.0  # the class, where the head has no weight
    old = uniform_kl(F.linear(content.mean(dim=(2, 3)), head.weight, head.bias))
    assert old.item() == pytest.approx(0.0, abs=1e-6)
    probes = ContentProbes([d], k)
    opt = torch.optim.Adam(probes.parameters(), lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        probes([content], labels)[0].backward()
        opt.step()
    assert probes.mi([content]).item() > 0.5  # nats, of log 4 = 1.39 at most
    assert probes([content], labels)[1].item() == 1.0


def test_each_terms_gradient_norm_on_the_shared_encoders_is_logged():
    torch.manual_seed(0)
    trainer = AETrainer(tiny(grad_norm_every=2), fake_data(), Accelerator(cpu=True))
    assert not any(k.startswith("gn_") for k in trainer.step(1))
    logged = trainer.step(2)
    assert logged["gn_E_content_rec"] > 0 and logged["gn_E_style_rec"] > 0
    assert logged["gn_E_style_style_cls"] > 0 and logged["gn_E_content_content_mi"] >= 0
    assert logged["gn_E_style_content_triplet"] == 0.0  # the content triplet never touches E_style
    assert logged["gn_E_content_style_triplet"] == 0.0
    assert not any(k.endswith(("_cls_head", "_mi_probe")) for k in logged)  # the heads' own losses


def test_layouts_share_the_interface_and_lean_is_cheaper():
    from torch.utils.flop_counter import FlopCounterMode

    sk, st = torch.rand(1, 1, 64, 64), torch.rand(1, 3, 64, 64)
    flops = {}
    for arch in ("lean", "classic"):
        m = SketchAutoEncoder(tiny(arch=arch, size=64, width=16, max_width=128).model_config()).eval()
        content = m.content_encoder(sk)
        assert content[-1].shape == (1, m.cfg.style_dim, 8, 8)  # f_content: style_dim x content_res²
        # classic keeps a full-size content map; lean starts at half size
        assert [c.shape[-1] for c in content] == ([64] if arch == "classic" else []) + [32, 16, 8]
        with FlopCounterMode(display=False) as fc:
            out = m(sk, st)
        assert out.shape == (1, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
        flops[arch] = fc.get_total_flops()
    assert flops["lean"] < flops["classic"] / 2


def test_configs_written_before_arch_keep_their_layout():
    from sketch2image.configs import GANConfig, from_dict

    old = {k: v for k, v in to_dict(tiny()).items() if k != "arch"}
    assert from_dict(AEConfig, old).arch == "classic"  # its weights were trained with that layout
    assert AEConfig().arch == "lean" and GANConfig().arch == "lean"  # new runs are lean
    assert from_dict(GANConfig, {"width": 8}).arch == "classic"
    with pytest.raises(S2IError, match="arch 'wide' must be lean or classic"):
        from_dict(AEConfig, {**old, "arch": "wide"})


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny(
        lr=2e-3, mask_regions=0, thicken_p=0, aug_max_rotate=0, aug_min_scale=1, aug_max_scale=1, aug_max_shift=0
    )
    trainer = AETrainer(cfg, fake_data(), Accelerator(cpu=True))
    x, s, plan = trainer.batch(1)
    s = s[:, :1].expand(-1, 2, -1, -1, -1)  # one sketch per image: a fixed input
    history = []
    for _ in range(40):
        terms = trainer.losses(x, s, plan)
        loss = trainer.total(terms)
        trainer.opt.zero_grad()
        trainer.opt_head.zero_grad()
        loss.backward()
        trainer.opt.step()
        trainer.opt_head.step()
        history.append(terms["rec"].item())
    assert history[-1] < 0.5 * history[0]


# --- augmentations ---------------------------------------------------------------------------


def test_augmentations():
    x = torch.rand(3, 3, 16, 16)
    same = random_affine(x, max_rotate=0, min_scale=1, max_scale=1, max_shift=0, flip_p=0)
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_affine(x, max_rotate=0, min_scale=1, max_scale=1, max_shift=0, flip_p=1)
    assert torch.allclose(flipped, x.flip(3), atol=1e-5)
    warped = random_affine(x)
    assert warped.shape == x.shape and not torch.allclose(warped, x)
    sk = torch.zeros(4, 1, 16, 16)  # all ink
    masked = mask_regions(sk, regions=2, max_frac=0.3)
    assert (masked >= sk).all() and (masked == 1).any() and (masked == 0).any()
    line = torch.ones(2, 1, 9, 9)
    line[..., 4, :] = 0
    assert (thicken(line, 1.0) == 0).sum() > (line == 0).sum()
    assert torch.equal(thicken(line, 0.0), line)


# --- data, training, resume ------------------------------------------------------------------


def test_paired_data_reports_missing_sketches(tmp_path, paired_manifest, caplog):
    manifest = paired_manifest
    data = PairedFiles.from_manifest(manifest, 32)
    assert len(data) == 6 and data.k == 2
    item = data[(1, 0, (1, 0))]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert item["sketches"].shape == (2, 32, 32) and item["sketches"].dtype == torch.uint8
    (tmp_path / "sk" / "s1" / "img2.png").unlink()
    with caplog.at_level(logging.WARNING, logger="sketch2image"):
        data = PairedFiles.from_manifest(manifest, 32)
    assert "img2" not in data.ids and len(data) == 5
    assert any("img2" in r.message for r in caplog.records)
    for p in (tmp_path / "sk").rglob("*.png"):
        p.unlink()
    with pytest.raises(InputError, match="no complete"):
        PairedFiles.from_manifest(manifest, 32)
    with pytest.raises(InputError, match="not found"):
        PairedFiles.from_manifest(tmp_path / "nope.json", 32)


def test_paired_data_loads_at_the_size_the_manifest_records(paired_manifest, caplog):
    with pytest.raises(InputError, match="records no sketch size"):
        PairedFiles.from_manifest(paired_manifest)
    data = json.loads(paired_manifest.read_text())
    paired_manifest.write_text(json.dumps({**data, "size": 16}))
    assert PairedFiles.from_manifest(paired_manifest)[(0, 0, (0,))]["image"].shape[-1] == 16
    with caplog.at_level(logging.WARNING, logger="sketch2image"):
        assert PairedFiles.from_manifest(paired_manifest, 32)[(0, 0, (0,))]["sketches"].shape[-1] == 32
    assert any("drawn at 16 px are resized to 32 px" in r.message for r in caplog.records)


# A tiny AE through the command line (the default loss set, unless a test adds --losses).
TINY_CLI = ["--set", "width=8", "--set", "max_width=32", "--set", "style_dim=16", "--set", "cls_k=4",
            "--batch-size", "4"]  # fmt: skip


def test_cli_ae_preset_defaults_to_the_manifest_size(tmp_path, paired_manifest):
    from sketch2image.cli import main

    data = json.loads(paired_manifest.read_text())
    paired_manifest.write_text(json.dumps({**data, "size": 32}))
    assert main(["ae", "train", "--data", str(paired_manifest), "--out", str(tmp_path / "ae"), "--steps", "1",
                 *TINY_CLI]) == 0  # fmt: skip
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["size"] == 32


def test_the_default_ae_is_reconstruction_only_and_the_paper_losses_are_one_option(tmp_path, paired_manifest, capsys):
    """Default: no self-supervised term (the faces ablation's answer); --losses paper switches all four on; a run
    resumed without the option goes on with the losses it was started with; resuming with others is refused."""
    from sketch2image.cli import main
    from sketch2image.options import SSL_WEIGHTS

    assert all(getattr(AEConfig(), k) == 0 for k in SSL_WEIGHTS) and not AEConfig().uses_classes
    assert set(LOSSES["paper"]) == set(SSL_WEIGHTS) and all(v > 0 for v in LOSSES["paper"].values())
    common = ["ae", "train", "--data", str(paired_manifest), *TINY_CLI, "--set", "log_every=1"]

    def weights(run: Path) -> dict:
        saved = json.loads((run / "config.json").read_text())
        return {k: saved[k] for k in SSL_WEIGHTS}

    assert main([*common, "--out", str(tmp_path / "rec"), "--steps", "1"]) == 0
    assert weights(tmp_path / "rec") == LOSSES["reconstruction"]
    paper = tmp_path / "paper"
    assert main([*common, "--out", str(paper), "--steps", "1", "--losses", "paper", "--set", "w_style_cls=0.5"]) == 0
    assert weights(paper) == {**LOSSES["paper"], "w_style_cls": 0.5}  # --set refines the named set
    assert "style_cls" in json.loads((paper / "log.jsonl").read_text().splitlines()[-1])
    assert "style_cls" not in json.loads((tmp_path / "rec" / "log.jsonl").read_text().splitlines()[-1])
    assert main([*common, "--out", str(paper), "--steps", "2", "--resume"]) == 0  # the run's own losses
    assert [json.loads(line)["step"] for line in (paper / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert weights(paper) == {**LOSSES["paper"], "w_style_cls": 0.5}
    capsys.readouterr()
    assert main([*common, "--out", str(paper), "--steps", "3", "--resume", "--losses", "reconstruction"]) == 2
    err = capsys.readouterr().err
    assert "was started with different" in err and "w_content_mi" in err


def test_train_resume_and_load(tmp_path, paired_manifest):
    manifest = paired_manifest
    run = tmp_path / "run"
    cfg = tiny(cls_k=4, cls_every=3)
    train_ae(cfg, manifest, run, progress=False)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert len(list((run / "samples").glob("*.png"))) == 2
    from sketch2image.storage import read_run_info

    info = read_run_info(run)
    assert info["stage"] == "ae" and info["data"] == str(manifest.resolve()) and info["n_images"] == 6
    meta = json.loads((run / "checkpoints" / "step_0000004" / "meta.json").read_text())
    assert meta["round"] == 1
    train_ae(AEConfig(**{**cfg.__dict__, "steps": 6}), manifest, run, progress=False)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    model = SketchAutoEncoder.from_pretrained(run)
    out = model(torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_paired_reconstruction_and_cross_grid(tmp_path, image_dir):
    """`s2i eval --no-refine --metrics mse,psnr` on an auto-encoder run: the paired reconstruction error."""
    from PIL import Image

    from sketch2image.cli import main
    from sketch2image.data.paired import load_pairs_by_id
    from sketch2image.figures import cross_grid

    sk_dir = tmp_path / "lines"
    for p in sorted(image_dir.rglob("*.*")):
        rel = p.relative_to(image_dir).with_suffix(".png")
        (sk_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("L").save(sk_dir / rel)
    (sk_dir / "orphan.png").write_bytes((sk_dir / "img0.png").read_bytes())  # no matching image: ignored
    torch.manual_seed(0)
    model = SketchAutoEncoder(tiny().model_config())
    model.save_pretrained(tmp_path / "ae")
    out = tmp_path / "recon.json"
    rc = main(["eval", "--model", str(tmp_path / "ae"), "--images", str(image_dir), "--sketches", str(sk_dir),
               "--metrics", "mse,psnr", "--no-refine", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())["metrics"]
    _, x, s = load_pairs_by_id(image_dir, sk_dir, 32)
    with torch.inference_mode():  # the same figures computed here directly from the network
        mse = (model.eval()(s, x) - x).pow(2).flatten(1).mean(1)
    assert rc in (0, None) and result["mse"]["n"] == 6
    assert result["mse"]["value"] == pytest.approx(mse.mean().item(), rel=1e-4)
    assert result["psnr"]["value"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), rel=1e-4)
    grid = cross_grid(model, torch.rand(2, 1, 32, 32), torch.rand(3, 3, 32, 32), tmp_path / "grid.png")
    w, h = Image.open(grid).size
    assert (w, h) == (4 * 34 + 2, 3 * 34 + 2)  # (1 + 3 styles) columns x (1 + 2 sketches) rows, 2 px padding
    assert main(["eval", "--model", str(tmp_path / "ae"), "--images", str(image_dir), "--sketches",
                 str(_empty(tmp_path)), "--metrics", "mse", "--out", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert not (tmp_path / "x.json").exists()


def _empty(tmp_path):
    from PIL import Image

    d = tmp_path / "unrelated"
    d.mkdir()
    Image.new("L", (8, 8), 255).save(d / "zzz.png")
    return d


def test_cli_ae_errors_one_line(tmp_path, capsys):
    from sketch2image.cli import main

    rc = main(["ae", "train", "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.json" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    rc = main(["ae", "train", "--data", "x", "--out", str(tmp_path / "run"), "--preset", "96"])
    assert rc == 2 and "no AE preset" in capsys.readouterr().err
    rc = main(["eval", "--model", str(tmp_path), "--images", ".", "--sketches", "."])
    assert rc == 2 and "no auto-encoder" in capsys.readouterr().err
