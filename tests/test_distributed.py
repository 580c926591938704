"""Every stage under torch.distributed: 2 CPU processes (gloo) launched with torchrun.

- parameters are identical on both ranks after every step;
- 2 processes with a global batch of 4 compute the same training as 1 process with batch 4;
- a run folder checkpointed by 2 processes (through the real `s2i` command) resumes in 1 and
  ends where an uninterrupted 1-process run ends (up to the 2-process steps' float noise).
"""

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from dist_stages import STEPS, build, flat
from safetensors.torch import load_file

from sketch2image.cli import main

TESTS = Path(__file__).resolve().parent
REL = 0.02  # |2-process update - 1-process update| / |1-process update|
RESUME_REL = 0.1  # |resumed-in-1 - 1-process| / |what the 1-process run's last 2 steps changed|


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def one_thread() -> Iterator[None]:
    """The in-process runs compared with the 2-process ones use one thread, as each torchrun worker does:
    the tolerances below are calibrated for the reduction-order noise between 1 and 2 processes, and a
    different thread count adds its own (convolution reductions split differently), which Adam amplifies
    on TOM's near-zero gradients. The suite itself may run with any number of threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), *args]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, f"torchrun failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    return run


def test_two_processes_stay_in_sync_and_match_one_process(tmp_path):
    torchrun([str(TESTS / "dist_worker.py"), str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2
    for stage in ("tom", "ae", "gan"):
        assert report[stage] == [True] * STEPS, f"{stage}: ranks diverged at some step: {report[stage]}"
        two = load_file(str(tmp_path / f"{stage}.safetensors"))
        with one_thread():
            _, step, modules = build(stage, Accelerator(cpu=True))
            start = flat(modules())
            for i in range(1, STEPS + 1):
                step(i)
            one = flat(modules())
        assert one.keys() == two.keys()
        delta_one = torch.cat([(one[k].float() - start[k].float()).flatten() for k in one])
        diff = torch.cat([(one[k].float() - two[k].float()).flatten() for k in one])
        assert delta_one.norm() > 0, f"{stage}: training did not move the weights"
        # The same update up to float noise: Adam turns reduction-order noise on near-zero gradients
        # into lr-sized steps on a handful of weights (TOM: ~0.1 %), nothing more.
        assert diff.norm() / delta_one.norm() < REL, f"{stage}: 2 processes differ from 1 ({diff.norm():.3g})"
        assert (diff.abs() > 1e-5).float().mean() < 0.01


TINY = {
    "ae": ["--preset", "64", "--batch-size", "4", "--set", "width=4", "--set", "max_width=32", "--set", "style_dim=16",
           "--set", "cls_every=2"],
    "tom": ["--size", "32", "--batch-size", "4", "--set", "g_width=8", "--set", "g_max_width=16", "--set", "d_forms=8",
            "--set", "d_hidden=16", "--set", "warmup=1", "--set", "snapshot_every=1", "--set", "snapshots=2"],
}  # fmt: skip


@pytest.mark.parametrize("stage", ["tom", "ae"])
def test_checkpoint_of_two_processes_resumes_in_one(tmp_path, paired_manifest, image_dir, sketch_dir, stage):
    """The real `s2i <stage> train` under torchrun, then --resume in one process."""
    data = (
        ["--data", str(paired_manifest)]
        if stage == "ae"
        else ["--images", str(image_dir), "--sketches", str(sketch_dir)]
    )
    common = [stage, "train", *data, *TINY[stage], "--set", "checkpoint_every=2", "--set", "sample_every=2",
              "--set", "log_every=1"]  # fmt: skip
    two = tmp_path / "two"
    torchrun(["-m", "sketch2image", *common, "--out", str(two), "--steps", "2"])
    log = (two / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]  # written by the main process only
    one = tmp_path / "one"
    with one_thread():
        assert main([*common, "--out", str(two), "--steps", "4", "--resume"]) == 0
        assert main([*common, "--out", str(one), "--steps", "4"]) == 0
    a, b, mid = _weights(two, stage), _weights(one, stage), _weights(one, stage, step=2)
    diff = torch.cat([(a[k].float() - b[k].float()).flatten() for k in b])
    resumed = torch.cat([(b[k].float() - mid[k].float()).flatten() for k in b])  # steps 3-4 of the 1-process run
    # Measured against what steps 3-4 changed: a lost part of the state (weights, Adam moments, RNG, the data
    # stream) makes those steps different altogether, while the 2-process steps' reduction-order noise, which
    # Adam amplifies on near-zero gradients (TOM's tiny GAN), stays a small fraction of them.
    rel = (diff.norm() / resumed.norm()).item()
    assert resumed.norm() > 0 and rel < RESUME_REL, f"resumed-in-1 run differs from the 1-process run by {rel:.3f}"


def _weights(run: Path, stage: str, step: int | None = None) -> dict[str, torch.Tensor]:
    """The trained network's weights in a run's latest checkpoint, or in the one of ``step``."""
    from sketch2image.train.checkpoint import latest_checkpoint, load_checkpoint

    path = latest_checkpoint(run) if step is None else run / "checkpoints" / f"step_{step:07d}"
    tensors, _ = load_checkpoint(path)
    prefix = "ae." if stage == "ae" else "g."
    return {k: v for k, v in tensors.items() if k.startswith(prefix) and v.is_floating_point()}
