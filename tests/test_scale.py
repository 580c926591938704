"""Evaluation and sketching at scale, and the memory check (data/paired.py's siblings).

- ``s2i eval`` streams the held-out set (``HeldOutPairs``) and scores exactly what the in-memory
  evaluation scores; ``--limit`` applies before anything is decoded; 2 processes give 1's report;
- ``s2i tom sketch`` gives the same sketches with workers and with 2 processes, skips an unreadable
  image (listed in the manifest), and writes a relative image root;
- a run that cannot fit stops before anything is written.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import one_thread, torchrun
from test_metrics import ALL_BUT_LPIPS, held_out  # noqa: F401 - the fixture

from sketch2image.cli import main
from sketch2image.errors import InputError
from sketch2image.metrics.evaluate import HeldOutPairs, evaluate, load_held_out
from sketch2image.pipeline import Sketch2Image
from sketch2image.sketcher import sketch_folder
from sketch2image.train.memory import estimate
from sketch2image.train.tom import train_tom


def test_streamed_evaluation_scores_what_the_in_memory_one_scores(model_dir, held_out, tmp_path):  # noqa: F811
    model = Sketch2Image.from_pretrained(model_dir)
    _, x, s = load_held_out(held_out / "images", held_out / "sketches", model.size)
    pairs = HeldOutPairs(held_out / "images", held_out / "sketches", model.size)
    a = evaluate(model, x, s, ALL_BUT_LPIPS, batch_size=4, cache_dir=tmp_path / "a", progress=False)
    b = evaluate(model, pairs, None, ALL_BUT_LPIPS, batch_size=4, cache_dir=tmp_path / "b", progress=False,
                 num_workers=2)  # fmt: skip
    for name in ALL_BUT_LPIPS:
        assert b["metrics"][name]["value"] == pytest.approx(a["metrics"][name]["value"], rel=1e-6, abs=1e-9), name
    assert b["metrics"]["skt_rec"]["real_images"] == pytest.approx(a["metrics"]["skt_rec"]["real_images"])
    c = evaluate(model, pairs, None, ["fid"], batch_size=4, cache_dir=tmp_path / "a", progress=False)
    assert c["metrics"]["fid"]["reference_cached"]  # tensors and files of the same pixels share one cache entry


def test_limit_applies_before_anything_is_decoded(model_dir, held_out):  # noqa: F811
    model = Sketch2Image.from_pretrained(model_dir)
    broken = held_out / "images" / "sub" / "nested.jpg"  # the last of the 6 ids in sorted order
    broken.write_bytes(b"not an image")
    pairs = HeldOutPairs(held_out / "images", held_out / "sketches", model.size, limit=5)
    assert len(pairs) == 5 and "sub/nested" not in pairs.ids
    evaluate(model, pairs, None, ["psnr"], progress=False)  # the broken file is never read
    with pytest.raises(InputError, match=f"unreadable file in the evaluation data: {broken}"):
        evaluate(model, HeldOutPairs(held_out / "images", held_out / "sketches", model.size), None, ["psnr"],
                 progress=False)  # fmt: skip


def test_two_processes_give_the_one_process_report(model_dir, held_out, tmp_path):  # noqa: F811
    args = ["eval", "--model", str(model_dir), "--data", str(held_out), "--metrics", "fid,kid,psnr,ssim",
            "--batch-size", "2", "--cache", str(tmp_path / "c"), "--workers", "0"]  # fmt: skip
    torchrun(["-m", "sketch2image", *args, "--out", str(tmp_path / "two.json")])
    with one_thread():  # as each torchrun worker: FID on 6 images magnifies thread-count float noise past 1e-5
        assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["n_test"] == one["n_test"] == 6
    for name in ("fid", "kid", "psnr", "ssim"):
        assert two["metrics"][name]["value"] == pytest.approx(one["metrics"][name]["value"], rel=1e-5), name


@pytest.fixture
def tom_run(tmp_path, image_dir, sketch_dir, tiny_tom):
    return train_tom(tiny_tom, image_dir, sketch_dir, tmp_path / "tom", progress=False)


def _sketches(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_tom_sketch_with_workers_and_processes_writes_the_same_sketches(tmp_path, tom_run, image_dir):
    plain = sketch_folder(tom_run, image_dir, tmp_path / "plain", batch_size=4, progress=False, ink_check=False)
    workers = sketch_folder(tom_run, image_dir, tmp_path / "workers", batch_size=4, progress=False, ink_check=False,
                            num_workers=2)  # fmt: skip
    torchrun(["-m", "sketch2image", "tom", "sketch", "--tom", str(tom_run), "--images", str(image_dir), "--out",
              str(tmp_path / "two"), "--batch-size", "2", "--no-ink-check", "--workers", "1"])  # fmt: skip
    a, b, c = (json.loads(p.read_text()) for p in (plain, workers, tmp_path / "two" / "manifest.json"))
    assert a["items"] == b["items"] == c["items"] and len(a["items"]) == 6
    assert a["ink"] == b["ink"]
    for name, report in a["ink"].items():
        assert c["ink"][name]["mean_ink"] == pytest.approx(report["mean_ink"], abs=1e-6)
    assert _sketches(tmp_path / "plain") == _sketches(tmp_path / "workers") == _sketches(tmp_path / "two")
    assert a["images_root"] == "../images"  # relative to the manifest: the data folder can move
    assert a["images_root_absolute"] == str(image_dir.resolve())


def test_tom_sketch_skips_an_unreadable_image_and_lists_it(tmp_path, tom_run, image_dir, caplog):
    (image_dir / "img3.png").write_bytes(b"truncated")
    manifest = json.loads(sketch_folder(tom_run, image_dir, tmp_path / "out", batch_size=4, progress=False,
                                        ink_check=False, num_workers=1).read_text())  # fmt: skip
    assert "img3" not in [it["id"] for it in manifest["items"]] and len(manifest["items"]) == 5
    assert manifest["skipped"] == [str(image_dir / "img3.png")]
    assert not (tmp_path / "out" / "s00" / "img3.png").exists()
    assert sum("img3.png" in r.message for r in caplog.records) == 1


def test_the_memory_estimate_grows_with_what_a_run_holds():
    base = estimate(10**6, 0, 32, 64, 8, 2, 5, False)
    assert sum(estimate(10**6, 0, 32, 128, 8, 2, 5, False).values()) > 3 * sum(base.values())
    assert estimate(10**6, 0, 32, 64, 16, 2, 5, False)["activations"] == 2 * base["activations"]
    assert estimate(10**6, 0, 32, 64, 8, 2, 5, True)["activations"] == base["activations"] // 2
    assert estimate(2 * 10**6, 0, 32, 64, 8, 2, 5, False)["weights, gradients, Adam"] == 32 * 10**6


def test_a_run_that_cannot_fit_stops_before_anything_is_written(tmp_path, paired_manifest, capsys):
    out = tmp_path / "ae"
    rc = main(["ae", "train", "--data", str(paired_manifest), "--preset", "64", "--batch-size", "100000",
               "--set", "width=4", "--set", "max_width=32", "--set", "style_dim=16", "--set", "w_style_cls=0",
               "--set", "w_content_mi=0", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "AE: needs about" in err and "of RAM available" in err and "--batch-size" in err
    assert not out.exists()


def test_the_memory_check_can_be_skipped(monkeypatch):
    from sketch2image.errors import S2IError
    from sketch2image.train import memory

    with pytest.raises(S2IError, match="needs about"):
        memory.check_memory("AE", {"activations": 10**18}, torch.device("cpu"), "")
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_memory("AE", {"activations": 10**18}, torch.device("cpu"), "")  # no error: the user said so


def test_eval_holds_glibc_mmap_threshold_unless_the_user_set_one():
    """A fixed threshold (not glibc's rising one) is what keeps eval's peak RSS flat in the test set's size."""
    code = "from sketch2image.train.memory import fixed_mmap_threshold as f; print(f())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = [sys.executable, "-c", code]
    plain = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout.strip()
    user = subprocess.run(run, env={**env, "MALLOC_MMAP_THRESHOLD_": "65536"}, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    assert plain == str(platform.libc_ver()[0] == "glibc")
    assert user == "False"
