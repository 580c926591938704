"""Training that cannot fail silently: numerics of TOM's discriminator, non-finite guards in every
stage, blank-sketch checks, per-stage precision in one process, optimiser state after resume."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sketch2image.cli import main
from sketch2image.configs import AEConfig, GANConfig, TOMConfig
from sketch2image.data.ink import BLANK_BELOW, SOLID_ABOVE, InkReport, ink_fraction
from sketch2image.errors import CheckpointError
from sketch2image.losses import gram
from sketch2image.nets.tom import GramDiscriminator
from sketch2image.options import LOSSES
from sketch2image.storage import save_tensors
from sketch2image.train.checkpoint import save_checkpoint
from sketch2image.train.guard import FiniteGuard, NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
TINY_TOM = ["--size", "32", "--batch-size", "2", "--snapshots", "2", "--set", "g_width=8", "--set", "g_max_width=16",
            "--set", "d_forms=8", "--set", "d_hidden=16", "--set", "warmup=2", "--set", "snapshot_every=1",
            "--set", "checkpoint_every=2", "--set", "sample_every=2"]  # fmt: skip
TINY_AE = ["--preset", "64", "--batch-size", "4", "--set", "size=32", "--set", "width=8", "--set", "max_width=32",
           "--set", "style_dim=16", "--set", "cls_k=4", "--set", "checkpoint_every=2",
           "--set", "sample_every=2"]  # fmt: skip
TINY_GAN = ["--batch-size", "2", "--set", "width=8", "--set", "levels=2", "--set", "d_width=8",
            "--set", "checkpoint_every=2", "--set", "sample_every=2"]  # fmt: skip


# --- TOM's discriminator numerics ---------------------------------------------------------------


def test_gram_is_float32_and_psd_under_bf16_autocast():
    f = torch.rand(2, 64, 16, 16) * 40  # relu3_1-sized activations: Gram entries in the thousands
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram(f)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, gram(f))
    assert torch.linalg.eigvalsh(g.double()).min() > -1e-6 * g.abs().max()


@pytest.mark.parametrize("norm", ["spectral", "none"])
def test_discriminator_is_finite_and_exact_under_bf16(norm):
    torch.manual_seed(0)
    d = GramDiscriminator(("relu1_1", "relu2_1"), forms=16, hidden=32, norm=norm).eval()
    feats = {"relu1_1": torch.rand(3, 64, 32, 32) * 30, "relu2_1": torch.rand(3, 128, 16, 16) * 60}
    grams = {k: gram(v) for k, v in feats.items()}
    ref = d(grams)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(grams)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)
    # Rounding can make uᵀGu slightly negative: the log must not see it.
    near_singular = {k: g - g.max() * 1e-3 * torch.eye(g.shape[-1]) for k, g in grams.items()}
    assert torch.isfinite(d(near_singular)).all()


def test_spectral_discriminator_has_bounded_slope():
    """Unit projections + spectral norm: scaling the weights (not the biases) up cannot scale the logits up."""
    torch.manual_seed(0)
    d = GramDiscriminator(("relu1_1",), forms=8, hidden=16, norm="spectral")
    grams = {"relu1_1": gram(torch.rand(4, 64, 8, 8) * 10)}
    for _ in range(20):  # let the power iteration converge
        d(grams)
    d.eval()
    before = d(grams)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if not name.endswith("bias"):
                p.mul_(100)
    torch.testing.assert_close(d(grams), before, rtol=1e-3, atol=1e-3)
    unbounded = GramDiscriminator(("relu1_1",), forms=8, hidden=16, norm="none")
    base = unbounded(grams).detach().clone()
    with torch.no_grad():
        for m in unbounded.heads["relu1_1"].mlp:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(100)
    assert (unbounded(grams) - base).abs().max() > 10


def test_old_tom_runs_keep_their_discriminator():
    from sketch2image.configs import from_dict, to_dict

    old = {k: v for k, v in to_dict(TOMConfig()).items() if k != "d_norm"}
    assert from_dict(TOMConfig, old).d_norm == "none"
    assert TOMConfig().d_norm == "spectral"


# --- the guard ------------------------------------------------------------------------------------


def _poison(monkeypatch, cls, attr: str = "forward", key: str | None = None) -> None:
    """Make every later call of ``cls.forward`` return NaN (a key of a dict output, or the tensor)."""
    orig = getattr(cls, attr)

    def nan_forward(self, *a, **kw):
        out = orig(self, *a, **kw)
        if key is not None:
            return {**out, key: out[key] * float("nan")}
        return out * float("nan")

    monkeypatch.setattr(cls, attr, nan_forward)


def _snapshot(run: Path) -> dict[str, bytes]:
    """The weights a later stage or a resume reads: byte-for-byte unchanged after the error (the logs,
    sample grids and config.json, which records the resumed run's new step budget, may change)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and not p.name.endswith((".jsonl", ".png", ".json")) or p.name in ("latest", "meta.json")}  # fmt: skip


@pytest.mark.parametrize("stage", ["tom", "ae", "gan"])
def test_non_finite_stops_the_stage_and_keeps_the_last_checkpoint(
    stage, tmp_path, image_dir, sketch_dir, paired_manifest, monkeypatch, capsys
):
    from sketch2image.nets.autoencoder import SketchAutoEncoder
    from sketch2image.nets.refiner import Refiner
    from sketch2image.nets.tom import SketchGenerator

    run = tmp_path / stage
    ae_run = tmp_path / "ae_for_gan"
    if stage == "gan":
        ae_args = ["ae", "train", "--data", str(paired_manifest), "--out", str(ae_run), "--steps", "2", *TINY_AE]
        assert main(ae_args) == 0
    args = {
        "tom": ["tom", "train", "--images", str(image_dir), "--sketches", str(sketch_dir), *TINY_TOM],
        "ae": ["ae", "train", "--data", str(paired_manifest), *TINY_AE],
        "gan": ["gan", "train", "--ae", str(ae_run), "--data", str(paired_manifest), *TINY_GAN],
    }[stage] + ["--out", str(run)]
    assert main([*args, "--steps", "4"]) == 0
    before = _snapshot(run)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    capsys.readouterr()

    cls, key, term = {
        "tom": (SketchGenerator, None, "loss_d"),
        "ae": (SketchAutoEncoder, "out", "rec"),
        "gan": (Refiner, None, "loss_d"),
    }[stage]
    _poison(monkeypatch, cls, key=key)
    rc = main([*args, "--steps", "8", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]  # the rest is the closed progress bar
    assert len(lines) == 1 and lines[0].startswith("s2i: error: "), err
    assert f"{stage.upper()} step 5: non-finite loss term '{term}'" in lines[0]
    assert "step_0000004, is kept" in lines[0]
    assert _snapshot(run) == before  # latest, checkpoints, snapshots, model/: untouched


def test_an_absurd_learning_rate_is_caught_before_anything_is_saved(tmp_path, paired_manifest, capsys):
    run = tmp_path / "ae"  # finite: an infinite lr is refused where the config is made (test_configs.py)
    rc = main(["ae", "train", "--data", str(paired_manifest), "--out", str(run), "--steps", "4", *TINY_AE,
               "--set", "lr=1e30"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "AE step 2: non-finite" in err and "no checkpoint had been written yet" in err
    assert not (run / "checkpoints").exists() and not (run / "model").exists()


class _ScaledAccelerator:
    """What the guard uses of an fp16 Accelerator, with a real GradScaler (fp16 autocast needs a GPU)."""

    num_processes = 1
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

    def backward(self, loss):
        self.scaler.scale(loss).backward()

    def unscale_gradients(self, opts):
        for o in opts:
            self.scaler.unscale_(o.optimizer)


class _ScaledOptimizer:
    def __init__(self, opt, scaler) -> None:
        self.optimizer, self.scaler, self.step_was_skipped = opt, scaler, False

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_was_skipped = self.scaler.get_scale() < scale


def test_fp16_overflow_is_a_skipped_step_not_an_error():
    acc = _ScaledAccelerator()
    w = torch.nn.Parameter(torch.ones(3))
    opt = _ScaledOptimizer(torch.optim.SGD([w], lr=0.1), acc.scaler)
    guard = FiniteGuard("AE", acc, max_skips=3)

    def update(scale: float) -> None:
        loss = (w * scale).sum()
        guard.update(opt, loss, [w], {"rec": loss}, "the AE")
        guard.end_step()

    update(2.0)
    assert torch.allclose(w, torch.full((3,), 0.8)) and guard.skipped == 0
    update(float("inf"))  # skipped, weights untouched
    assert guard.skipped == 1 and torch.allclose(w, torch.full((3,), 0.8))
    update(2.0)
    assert guard._in_a_row == 0 and torch.allclose(w, torch.full((3,), 0.6))
    update(float("inf"))
    update(float("inf"))
    with pytest.raises(NonFiniteError, match="skipped 3 steps in a row"):
        update(float("inf"))


def test_a_non_finite_gradient_of_a_finite_loss_is_named():
    from sketch2image.train.common import make_accelerator

    guard = FiniteGuard("GAN", make_accelerator("no"))
    guard.step = 7
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    loss = w.sqrt().sum()  # 0, with an infinite gradient at 0
    guard.update(opt, loss, [w], {"adv": loss}, "G2")
    with pytest.raises(NonFiniteError, match=r"GAN step 7: non-finite gradient norm of G2 \(inf\)"):
        guard.end_step()


def test_non_finite_weights_are_never_written(tmp_path):
    bad = {"w": torch.tensor([1.0, float("nan")]), "rng": torch.zeros(3, dtype=torch.uint8)}
    with pytest.raises(CheckpointError, match="'w' holds non-finite"):
        save_tensors(bad, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path, 3, bad, {})
    assert list(tmp_path.iterdir()) == []


# --- ink: blank and solid sketches ------------------------------------------------------------


def test_ink_fraction_and_report():
    white = torch.ones(1, 1, 100, 100)
    lines = white.clone()
    lines[..., 50, :] = 0  # one line: 1 % ink
    black = torch.zeros(1, 1, 100, 100)
    nan = torch.full((1, 1, 100, 100), float("nan"))
    ink = ink_fraction(torch.cat([white, lines, black, nan]))
    assert ink.tolist() == pytest.approx([0.0, 0.01, 1.0, 1.0])
    assert ink_fraction((torch.cat([white, lines]) * 255).to(torch.uint8)).tolist() == pytest.approx([0.0, 0.01])
    assert BLANK_BELOW < 0.01 < SOLID_ABOVE
    assert not InkReport.of(torch.tensor([0.01, 0.05, 0.0])).failed  # one blank in three is fine
    report = InkReport.of(torch.tensor([0.0, 0.0, 0.05]))
    assert report.failed and "67% of 3 sketches are blank" in report.problem()
    assert InkReport.of(torch.tensor([0.9, 0.95, 0.05])).failed
    assert InkReport.of(torch.tensor([0.05]), torch.tensor([True])).failed


def _set_snapshot_output(path: Path, bias: float) -> None:
    """Rewrite a TOM snapshot so that it draws a constant grey level sigmoid(bias) everywhere."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    last = sorted((k for k in tensors if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))[-1]
    tensors[last] = torch.zeros_like(tensors[last])
    tensors[last.replace("weight", "bias")] = torch.full_like(tensors[last.replace("weight", "bias")], bias)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("bias, word", [(20.0, "blank"), (-20.0, "solid")])
def test_tom_sketch_stops_on_blank_or_solid_snapshots(bias, word, tmp_path, image_dir, sketch_dir, capsys):
    run, out = tmp_path / "tom", tmp_path / "drawn"
    args = ["tom", "train", "--images", str(image_dir), "--sketches", str(sketch_dir), "--out", str(run)]
    assert main([*args, "--steps", "4", *TINY_TOM]) == 0
    for snap in (run / "snapshots").glob("*.safetensors"):
        _set_snapshot_output(snap, bias)
    capsys.readouterr()
    rc = main(["tom", "sketch", "--run", str(run), "--images", str(image_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "snapshot_00" in err and "snapshot_01" in err and f"100% of 6 sketches are {word}" in err
    assert not out.exists() or not any(out.rglob("*"))  # nothing written


def test_snapshot_with_nan_weights_is_refused(tmp_path, image_dir, sketch_dir):
    from sketch2image.sketcher import TOMSketcher

    run = tmp_path / "tom"
    assert main(["tom", "train", "--images", str(image_dir), "--sketches", str(sketch_dir), "--out", str(run),
                 "--steps", "4", *TINY_TOM]) == 0  # fmt: skip
    snap = run / "snapshots" / "snapshot_01.safetensors"
    tensors = load_file(str(snap))
    first = next(iter(tensors))
    tensors[first] = tensors[first] * float("nan")
    save_file(tensors, str(snap), metadata={"format": "sketch2image.tom_snapshot/1",
                                            "config": (run / "config.json").read_text()})  # fmt: skip
    with pytest.raises(CheckpointError, match="snapshot_01.safetensors.*diverged"):
        TOMSketcher.from_pretrained(run)


def test_ae_train_refuses_a_mostly_blank_manifest(tmp_path, paired_manifest, capsys):
    manifest = json.loads(paired_manifest.read_text())
    for item in manifest["items"][:4]:  # 4 of 6 images: every sketch blank
        for rel in item["sketches"]:
            Image.new("L", (32, 32), 255).save(paired_manifest.parent / rel)
    rc = main(["ae", "train", "--data", str(paired_manifest), "--out", str(tmp_path / "ae"), "--steps", "2", *TINY_AE])
    err = capsys.readouterr().err
    assert rc == 2 and str(paired_manifest) in err and "67% of 12 sketches are blank" in err
    assert not (tmp_path / "ae" / "checkpoints").exists()


# --- GPU-path defects that a CPU can show --------------------------------------------------------


def test_three_stages_with_different_precisions_in_one_process(tmp_path, image_dir, sketch_dir, paired_manifest):
    from sketch2image.train.ae import train_ae
    from sketch2image.train.gan import train_gan
    from sketch2image.train.tom import train_tom

    tom = TOMConfig(size=32, g_width=8, g_max_width=16, d_forms=8, d_hidden=16, batch_size=2, steps=2, warmup=1,
                    snapshot_every=1, snapshots=2, mixed_precision="no")  # fmt: skip
    ae = AEConfig(size=32, width=8, max_width=32, style_dim=16, batch_size=4, cls_k=4, steps=2, mixed_precision="bf16",
                  **LOSSES["paper"])  # fmt: skip
    gan = GANConfig(width=8, levels=2, d_width=8, batch_size=2, steps=2, mixed_precision="no")
    train_tom(tom, image_dir, sketch_dir, tmp_path / "tom", progress=False)
    train_ae(ae, paired_manifest, tmp_path / "ae", progress=False)
    train_gan(gan, tmp_path / "ae", paired_manifest, tmp_path / "gan", progress=False)
    for run in ("tom", "ae", "gan"):
        assert (tmp_path / run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    # and back again: the fp32 TOM run resumed in bf16 (a run started on a CPU, continued on a GPU)
    train_tom(dataclasses.replace(tom, mixed_precision="bf16", steps=3), image_dir, sketch_dir, tmp_path / "tom",
              progress=False)  # fmt: skip
    assert (tmp_path / "tom" / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    assert json.loads((tmp_path / "tom" / "config.json").read_text())["mixed_precision"] == "bf16"


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("stage", ["tom", "ae", "gan"])
def test_optimiser_state_takes_the_parameters_layout_after_resume(stage, precision):
    """On CUDA the networks are channels_last; resumed Adam moments must match them (the fused kernel
    refuses mismatched layouts). The CPU has no such default, so the layout is set here by hand."""
    from dist_stages import build

    from sketch2image.train.common import make_accelerator

    trainer, step, _ = build(stage, make_accelerator(precision))
    step(1)
    tensors, meta = trainer.state()
    resumed, step2, modules = build(stage, make_accelerator(precision))
    for m in modules().values():
        m.to(memory_format=torch.channels_last)
    resumed.load_state(tensors, meta, "test")
    _, optimizers, _ = resumed._parts()
    checked = 0
    for opt in optimizers.values():
        for group in opt.param_groups:
            for p in group["params"]:
                for key, v in opt.state.get(p, {}).items():
                    if key == "step":
                        continue
                    assert (v.device, v.dtype, v.stride()) == (p.device, p.dtype, p.stride()), key
                    checked += p.dim() == 4 and not p.is_contiguous()
    assert checked > 0  # some moments really were channels_last
    losses = step2(2)
    assert all(math.isfinite(v) for v in losses.values())


# --- the GPU check script, at tiny sizes on the CPU ------------------------------------------------


def test_gpu_check_script_runs_end_to_end_on_cpu(tmp_path, sketch_dir):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):  # smooth colour blobs with an edge, like tiny photos
        yy, xx = np.mgrid[:48, :48]
        c = rng.uniform(0, 255, (3,))
        disk = ((yy - rng.integers(12, 36)) ** 2 + (xx - rng.integers(12, 36)) ** 2) < rng.integers(60, 200)
        arr = np.where(disk[..., None], c, 255 - c).astype(np.uint8)
        Image.fromarray(arr).save(images / f"{i}.jpg")
    out = tmp_path / "check"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--images", str(images), "--sketches", str(sketch_dir),
         "--out", str(out), "--tiny", "--no-speed", "--precision", "no", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["ok"] and summary["tom"]["killed_after"] == 2 and summary["ae"]["killed_after"] == 2
    assert summary["generate"]["images"] == 8 * 2 and (out / "transfer.png").is_file()
    assert "OK: cpu" in r.stdout
