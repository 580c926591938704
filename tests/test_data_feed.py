"""The lazy data path of the auto-encoder and refiner stages (data/paired.py, train/feed.py).

- the files read lazily give the very batches the in-memory path gives, bit for bit;
- 2 processes each decode only their own rows, and only the sketches a step uses;
- a resumed run continues the same stream; an unreadable file mid-run is skipped with one warning;
- the ink check samples; a manifest's image folder may be moved with it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from dist_stages import STEPS, tiny_ae_config
from helpers import assert_same_training_state
from PIL import Image
from safetensors.torch import load_file
from test_distributed import REL, TESTS, torchrun

from sketch2image.cli import main
from sketch2image.configs import GANConfig
from sketch2image.data import paired
from sketch2image.data.paired import PairedData, PairedFiles, PairIndex
from sketch2image.errors import InputError
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.train.ae import AETrainer
from sketch2image.train.gan import GANTrainer


def _ae(data, workers: int = 0, **kw) -> AETrainer:
    torch.manual_seed(0)
    cfg = tiny_ae_config()
    for k, v in {"num_workers": workers, **kw}.items():
        setattr(cfg, k, v)
    return AETrainer(cfg, data, Accelerator(cpu=True))


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_lazy_reader_gives_the_in_memory_batches_bit_for_bit(paired_manifest):
    files = PairedFiles.from_manifest(paired_manifest, 32)
    ram = PairedData.from_files(files)  # every pair decoded up front, all K sketches, indexed in memory
    lazy, memory = _ae(files, workers=2), _ae(ram)
    for step in range(1, 6):
        xa, sa, pa = lazy.batch(step)
        xb, sb, pb = memory.batch(step)
        assert torch.equal(pa.index, pb.index) and torch.equal(pa.picks, pb.picks)
        assert all(torch.equal(pa.rand[k], pb.rand[k]) for k in pa.rand if torch.is_tensor(pa.rand[k]))
        assert torch.equal(xa, xb) and torch.equal(sa, sb)
        expected = ram.sketches[pa.index[:, None], pa.picks].float().div(255).unsqueeze(2)
        assert torch.equal(sb, expected)  # the picked sketches of the planned images
        assert sa.shape[1] == 2  # the two sketches the AE uses, not all K
    a, b = _ae(files, workers=2), _ae(ram)
    for step in range(1, 4):
        a.step(step)
        b.step(step)
    wa, wb = _weights(a.acc.unwrap_model(a.model)), _weights(b.acc.unwrap_model(b.model))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_refiner_reads_one_sketch_per_image_and_the_same_batches(paired_manifest):
    files = PairedFiles.from_manifest(paired_manifest, 32)
    ram = PairedData.from_files(files)
    ae = SketchAutoEncoder(tiny_ae_config().model_config())
    cfg = GANConfig(width=8, max_width=16, levels=2, d_width=8, batch_size=4, noise=False)
    out = []
    for data, workers in ((files, 2), (ram, 0)):
        torch.manual_seed(0)
        trainer = GANTrainer(GANConfig(**{**cfg.__dict__, "num_workers": workers}), ae, data, Accelerator(cpu=True))
        batch, plan = trainer.feed.next(1)
        assert batch["sketches"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.uint8
        for step in range(1, 4):
            trainer.step(step)
        out.append(_weights(trainer.g_ema))
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_two_processes_decode_only_their_rows_and_match_one(tmp_path, paired_manifest):
    from dist_feed import run

    torchrun([str(TESTS / "dist_feed.py"), str(paired_manifest), str(tmp_path)])
    torch.manual_seed(0)
    one, w_one = run(paired_manifest, Accelerator(cpu=True))
    ranks = [json.loads((tmp_path / f"decodes_{r}.json").read_text()) for r in (0, 1)]
    b = tiny_ae_config().batch_size
    for s in range(STEPS):
        everything = one[s]["decoded"]  # the 1-process step decodes the whole global batch: b + b classification
        assert len(everything) == 2 * b
        for r, plans in enumerate(ranks):
            (lo, hi), (c_lo, c_hi) = plans[s]["rows"], plans[s]["cls_rows"]
            mine = everything[lo:hi] + everything[b + c_lo : b + c_hi]
            assert plans[s]["decoded"] == mine, f"rank {r} decoded rows it does not train on"
            assert all(len(picks) == 2 for _, picks in plans[s]["decoded"])  # 2 of the K sketches
    two = load_file(str(tmp_path / "ae.safetensors"))
    torch.manual_seed(0)
    start = {f"ae.{k}": v for k, v in _weights(SketchAutoEncoder(tiny_ae_config().model_config())).items()}
    delta = torch.cat([(w_one[k] - start[k]).flatten() for k in w_one])
    diff = torch.cat([(w_one[k] - two[k]).flatten() for k in w_one])
    assert delta.norm() > 0 and diff.norm() / delta.norm() < REL


AE_SETS = ["width=4", "max_width=32", "style_dim=16", "cls_every=2", "checkpoint_every=3", "sample_every=3",
           "num_workers=2", "log_every=1"]  # fmt: skip
# The paper's losses: the classifier's rounds must travel through a resume too.
AE_ARGS = ["--preset", "64", "--batch-size", "4", "--losses", "paper", *(a for kv in AE_SETS for a in ("--set", kv))]


def test_a_resumed_run_continues_the_same_stream(tmp_path, paired_manifest):
    common = ["ae", "train", "--data", str(paired_manifest), *AE_ARGS]
    assert main([*common, "--out", str(tmp_path / "cut"), "--steps", "3"]) == 0
    assert main([*common, "--out", str(tmp_path / "cut"), "--steps", "6", "--resume"]) == 0
    assert main([*common, "--out", str(tmp_path / "whole"), "--steps", "6"]) == 0
    a = SketchAutoEncoder.from_pretrained(tmp_path / "cut").state_dict()
    b = SketchAutoEncoder.from_pretrained(tmp_path / "whole").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same batches, augmentation, classifier rounds
    assert_same_training_state(tmp_path / "cut", tmp_path / "whole")  # Adam moments, heads, RNG, generators too
    logs = [
        [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("cut", "whole")
    ]
    cut, whole = ({r["step"]: {k: v for k, v in r.items() if k != "time"} for r in log} for log in logs)
    # What is logged after the cut matches too: step 4 ends a classifier round that began before it (cls_acc
    # averages the round's batches, so the round's accuracies travel in the checkpoint).
    assert [cut[s] for s in (4, 5, 6)] == [whole[s] for s in (4, 5, 6)] and "cls_acc" in cut[4]


def test_a_resumed_trainer_keeps_the_rounds_accuracies(paired_manifest):
    files = PairedFiles.from_manifest(paired_manifest, 32)
    first = _ae(files, cls_every=4)
    for step in (1, 2):
        first.step(step)
    again = _ae(files, cls_every=4)
    again.load_state(*first.state(), "test")
    assert again.round == first.round == 0 and again.round_acc == first.round_acc and len(first.round_acc) == 2
    assert again.step(3)["cls_acc"] == first.step(3)["cls_acc"]


def test_an_unreadable_file_mid_run_is_skipped_with_one_warning(paired_manifest, caplog):
    files = PairedFiles.from_manifest(paired_manifest, 32)
    trainer = _ae(files, workers=2)
    victim = Path(files.index.images[2])
    victim.write_bytes(b"broken after the startup check")
    used = []
    with caplog.at_level(logging.WARNING, logger="sketch2image"):
        for step in range(1, 13):
            batch, plan = trainer.feed.next(step)
            used += batch["index"].tolist()
            assert len(batch["index"]) == 8  # the batch keeps its size (4 reconstruction + 4 classification rows)
    assert 2 not in used and trainer.feed.n_broken >= 2  # drawn several times, never trained on
    said = [r.message for r in caplog.records if str(victim) in r.message]
    assert len(said) == 1 and "skipping an unreadable pair" in said[0]


def test_a_vanished_data_folder_stops_with_a_clear_error(paired_manifest):
    files = PairedFiles.from_manifest(paired_manifest, 32)
    trainer = _ae(files, workers=1)
    for p in files.index.images:
        Path(p).unlink()
    with pytest.raises(InputError, match="unreadable pairs in a row.*still there"):
        trainer.step(1)


def test_the_ink_check_samples_and_still_refuses_blank_sketches(tmp_path, paired_manifest, monkeypatch):
    index = PairIndex.scan(paired_manifest, 32)
    seen = []
    real = paired.open_sketch
    monkeypatch.setattr(paired, "open_sketch", lambda p, s: seen.append(p) or real(p, s))
    index.check_ink(sample=3)
    assert len(seen) == 3 * index.k  # 3 items of 6, each snapshot
    for p in (tmp_path / "sk").rglob("*.png"):
        Image.new("L", (32, 32), 255).save(p)
    with pytest.raises(InputError, match="unusable for training.*blank"):
        index.check_ink(sample=3)


def test_a_moved_data_folder_loads_through_its_relative_image_root(tmp_path, paired_manifest, image_dir):
    data = json.loads(paired_manifest.read_text())
    data["images_root"] = "../images"  # relative to the manifest's folder
    paired_manifest.write_text(json.dumps(data))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(tmp_path / "sk"), moved / "sk")
    shutil.move(str(image_dir), moved / "images")
    files = PairedFiles.from_manifest(moved / "sk" / "manifest.json", 32)
    assert len(files) == 6 and files[(0, 0, (0,))]["image"].shape == (3, 32, 32)
    shutil.rmtree(moved / "images")
    with pytest.raises(InputError, match="image folder is not there"):
        PairedFiles.from_manifest(moved / "sk" / "manifest.json", 32)


def test_a_run_folder_that_is_not_shared_between_ranks_is_refused(tmp_path):
    for mode in ("shared", "separate"):
        torchrun([str(TESTS / "dist_shared.py"), str(tmp_path), mode])
    said = {m: [json.loads((tmp_path / f"{m}_{r}.json").read_text()) for r in (0, 1)] for m in ("shared", "separate")}
    assert said["shared"] == ["ok", "ok"]
    assert not (tmp_path / "run" / ".shared-check").exists()  # the marker is removed again
    for message in said["separate"]:  # every rank stops, with the same readable reason
        assert "not shared between the processes" in message and "rank 1" in message
