import subprocess
import sys

import pytest

from sketch2image.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sketch2image", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["tom", "train", "--images", "/no/such/dir", "--sketches", "/no/such", "--out", "OUT"], "/no/such/dir"),
        (["tom", "sketch", "--run", "/no/run", "--images", ".", "--out", "OUT"], "/no/run"),
        (["tom", "train", "--images", ".", "--sketches", ".", "--out", "OUT", "--set", "bogus=1"], "bogus"),
        (["tom", "train", "--images", ".", "--sketches", ".", "--out", "OUT", "--size", "30"], "multiple of 16"),
        (["tom", "train", "--images", "."], "--sketches"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, needle):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    r = _run(*args)
    assert r.returncode == 2  # argparse's and s2i's errors alike
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "OUT").exists()


def test_cli_bad_image_folder_in_process(tmp_path, capsys, sketch_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["tom", "train", "--images", str(empty), "--sketches", str(sketch_dir), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(empty) in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_cli_train_then_sketch(tmp_path, image_dir, sketch_dir):
    run = tmp_path / "run"
    common = [
        "--set",
        "g_width=8",
        "--set",
        "g_max_width=16",
        "--set",
        "d_forms=8",
        "--set",
        "d_hidden=16",
        "--set",
        "warmup=1",
        "--set",
        "snapshot_every=1",
    ]
    rc = main(
        [
            "tom",
            "train",
            "--images",
            str(image_dir),
            "--sketches",
            str(sketch_dir),
            "--out",
            str(run),
            "--size",
            "32",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--snapshots",
            "2",
            *common,
        ]
    )
    assert rc == 0
    # Two steps draw nothing yet: the ink check is bypassed here and tested in test_guard.py.
    sketch = ["tom", "sketch", "--run", str(run), "--images", str(image_dir), "--out", str(tmp_path / "sk")]
    assert main(sketch) == 2
    assert main([*sketch, "--no-ink-check"]) == 0
    assert len(list((tmp_path / "sk" / "s01").rglob("*.png"))) == 6


def test_ctrl_c_mid_run_exits_130_and_the_run_resumes(tmp_path, paired_manifest, monkeypatch, capsys):
    """Ctrl-C at step 3 of 4: exit 130 with one line, the step-2 checkpoint intact, and --resume finishes."""
    from sketch2image.train.ae import AETrainer
    from sketch2image.train.checkpoint import latest_checkpoint

    run = tmp_path / "ae"
    args = ["ae", "train", "--data", str(paired_manifest), "--out", str(run), "--preset", "64", "--batch-size", "4",
            "--losses", "paper", "--steps", "4",
            *(a for kv in ("width=4", "max_width=32", "style_dim=16", "cls_every=2", "checkpoint_every=2")
              for a in ("--set", kv))]  # fmt: skip
    step = AETrainer.step

    def interrupted(self, n):
        if n == 3:
            raise KeyboardInterrupt
        return step(self, n)

    with monkeypatch.context() as m:
        m.setattr(AETrainer, "step", interrupted)
        assert main(args) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "s2i: interrupted" and "Traceback" not in err
    assert latest_checkpoint(run).name == "step_0000002"
    assert main([*args, "--resume"]) == 0
    assert latest_checkpoint(run).name == "step_0000004"
