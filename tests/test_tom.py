import json

import numpy as np
import pytest
import torch
from helpers import assert_same_training_state
from safetensors.torch import load_file

from sketch2image.configs import TOMConfig
from sketch2image.errors import CheckpointError, S2IError
from sketch2image.nets.tom import GramDiscriminator, SketchGenerator, binarize
from sketch2image.sketcher import TOMSketcher, sketch_folder
from sketch2image.train.tom import SketchStats, stroke_variants, target_pool, train_tom


def test_generator_and_discriminator_shapes():
    g = SketchGenerator("relu3_1", width=8, max_width=16)
    s = g(torch.randn(2, 256, 8, 8))
    assert s.shape == (2, 1, 32, 32) and 0 <= s.min() and s.max() <= 1
    g4 = SketchGenerator("relu4_1", width=8, max_width=16)
    assert g4(torch.randn(1, 512, 4, 4)).shape == (1, 1, 32, 32)
    d = GramDiscriminator(("relu1_1", "relu2_1"), forms=4, hidden=8)
    logits = d({"relu1_1": torch.rand(3, 64, 64), "relu2_1": torch.rand(3, 128, 128)})
    assert logits.shape == (3,)


def test_discriminator_sees_only_gram_statistics():
    # Two feature maps with the same Gram matrix (a spatial permutation) must get the same logit.
    from sketch2image.losses import gram

    d = GramDiscriminator(("relu1_1",), forms=4, hidden=8).eval()  # eval: no power-iteration step per call
    f = torch.rand(1, 64, 6, 6)
    perm = f.flatten(2)[:, :, torch.randperm(36)].view_as(f)
    assert torch.allclose(d({"relu1_1": gram(f)}), d({"relu1_1": gram(perm)}), atol=1e-5)


def test_binarize():
    x = torch.tensor([0.1, 0.5, 0.9])
    assert binarize(x, 0.5).tolist() == [0.0, 1.0, 1.0]


def test_target_pool_varies_before_snapshots_only():
    cfg = TOMConfig(steps=40, warmup=10, snapshot_every=5, snapshots=4, snapshot_focus=0.5)
    stats = SketchStats(
        torch.zeros(12, 1, 1, 1), torch.ones(12, 1, 1, 1), {}, ["as_drawn"] * 4 + ["bold"] * 4 + ["light"] * 4
    )
    assert target_pool(3, cfg, stats).tolist() == [0, 1, 2, 3]  # warm-up: sketches as drawn
    windows = [target_pool(s, cfg, stats) for s in cfg.snapshot_steps()]
    assert {stats.variant[int(w[0])] for w in windows} == {"as_drawn", "bold", "light"}
    assert all(len(w) == 2 for w in windows)
    assert torch.equal(target_pool(10, cfg, stats), target_pool(8, cfg, stats))  # one pool per window, deterministic
    assert target_pool(40, cfg, stats).tolist() == [0, 1, 2, 3]


def test_stroke_variants_bolder_and_lighter():
    s = torch.ones(1, 1, 9, 9)
    s[..., 4, :] = 0  # one dark line
    v = stroke_variants(s, True)
    assert (v["bold"] < 0.5).sum() > (s < 0.5).sum()
    assert v["light"].min() == pytest.approx(0.5)
    assert list(stroke_variants(s, False)) == ["as_drawn"]


def test_train_sketch_and_resume(tmp_path, image_dir, sketch_dir, tiny_tom):
    run = tmp_path / "run"
    train_tom(tiny_tom, image_dir, sketch_dir, run, progress=False)
    snaps = sorted((run / "snapshots").glob("*.safetensors"))
    assert len(snaps) == 3
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert len(list((run / "samples").glob("*.png"))) == 2
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and all("loss_feat" in r for r in logged)
    # snapshots are different generators
    a, b = load_file(str(snaps[0])), load_file(str(snaps[-1]))
    assert any(not torch.equal(a[k], b[k]) for k in a)

    # resume continues the step count instead of starting over
    longer = TOMConfig(**{**tiny_tom.__dict__, "steps": 6})
    train_tom(longer, image_dir, sketch_dir, run, progress=False)
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    with pytest.raises(S2IError, match="different"):
        train_tom(TOMConfig(**{**tiny_tom.__dict__, "g_width": 4}), image_dir, sketch_dir, run, progress=False)

    # ... and ends where an uninterrupted 6-step run ends: weights, Adam moments, RNG, snapshots
    whole = tmp_path / "whole"
    train_tom(longer, image_dir, sketch_dir, whole, progress=False)
    assert_same_training_state(run, whole)
    for snap in sorted((whole / "snapshots").glob("*.safetensors")):
        a, b = load_file(str(snap)), load_file(str(run / "snapshots" / snap.name))
        assert all(torch.equal(a[k], b[k]) for k in a)

    out = tmp_path / "sketches_out"
    # A 6-step TOM draws almost nothing: the plumbing is tested here, the ink check in test_guard.py.
    manifest = json.loads(
        sketch_folder(run, image_dir, out, batch_size=4, threshold=0.5, progress=False, ink_check=False).read_text()
    )
    ids = [item["id"] for item in manifest["items"]]
    assert sorted(ids) == ["img0", "img1", "img2", "img3", "img4", "sub/nested"]
    for item in manifest["items"]:
        assert len(item["sketches"]) == 3
        assert (image_dir / item["image"]).is_file()
        for rel in item["sketches"]:
            assert rel.endswith(item["id"] + ".png")
            from PIL import Image

            img = Image.open(out / rel)
            assert img.mode == "L" and img.size == (32, 32)
            assert set(np.unique(np.asarray(img)).tolist()) <= {0, 255}  # binarised


def test_sketcher_is_deterministic_and_batch_independent(tmp_path, image_dir, sketch_dir, tiny_tom):
    run = tmp_path / "run"
    train_tom(tiny_tom, image_dir, sketch_dir, run, progress=False)
    sk = TOMSketcher.from_pretrained(run)
    x = torch.rand(3, 3, 32, 32)
    both = sk(x)
    assert both.shape == (3, 3, 32, 32)
    assert torch.allclose(sk(x[1:2]), both[1:2], atol=1e-5)
    for k in range(3):  # one snapshot alone (what the metrics run) is that snapshot of the full call
        assert torch.equal(sk(x, snapshot=k), both[:, k : k + 1])


def test_sketcher_refuses_incomplete_runs(tmp_path, tiny_tom):
    with pytest.raises(CheckpointError, match="not found"):
        TOMSketcher.from_pretrained(tmp_path / "nope")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(tiny_tom.__dict__))
    with pytest.raises(CheckpointError, match="no generator snapshots"):
        TOMSketcher.from_pretrained(run)
    (run / "config.json").write_text(json.dumps({**tiny_tom.__dict__, "future_option": 1}))
    with pytest.raises(CheckpointError, match="unknown TOMConfig keys"):
        TOMSketcher.from_pretrained(run)


def test_sketcher_refuses_corrupt_snapshot(tmp_path, image_dir, sketch_dir, tiny_tom):
    run = tmp_path / "run"
    train_tom(tiny_tom, image_dir, sketch_dir, run, progress=False)
    (run / "snapshots" / "snapshot_01.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="snapshot_01.safetensors"):
        TOMSketcher.from_pretrained(run)
