"""End-to-end check of the training path on one machine (made for one GPU, runs anywhere).

TOM -> sketches -> auto-encoder -> refiner on an image folder, each training stage killed once
(SIGKILL, right after its first checkpoint) and resumed; then export, generate, and the speed
benchmark. It fails (exit code 1) on any non-zero exit, any non-finite logged value, a resumed
run that does not reach its last step, blank or solid sketches, or missing outputs.

    python scripts/gpu_check.py --images faces/ --sketches openmoji/sketch_set --out /tmp/check \\
        --vgg vgg_relu3_1.safetensors          # on one GPU: ~5 minutes, bf16, 128 px

The tests run it at tiny sizes on the CPU (``--tiny --no-speed``). ``--vgg`` takes the small file
of ``s2i weights vgg`` on machines without the 80 MB VGG-19 package. A summary table is printed
last and written to ``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class CheckFailed(Exception):
    pass


def s2i_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sketch2image", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list[str], log: Path) -> float:
    """Run to completion, output to ``log``; the wall time. A non-zero exit fails the check."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT)
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise CheckFailed(f"`{' '.join(cmd[2:5])} ...` exited with {rc}: {' | '.join(tail)}")
    return time.perf_counter() - t0


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, log: Path, timeout: float) -> int:
    """Start a training command and SIGKILL it as soon as its first checkpoint is in place; that step."""
    pointer = run_dir / "checkpoints" / "latest"
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT)
        deadline = time.monotonic() + timeout
        while not pointer.is_file():
            if proc.poll() is not None:
                raise CheckFailed(f"{run_dir}: ended (exit {proc.returncode}) before its first checkpoint; see {log}")
            if time.monotonic() > deadline:
                proc.kill()
                raise CheckFailed(f"{run_dir}: no checkpoint within {timeout:.0f} s; see {log}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return int(pointer.read_text().strip().split("_")[-1])


def check_log(run_dir: Path, steps: int) -> dict[str, float]:
    """Every logged value finite, the last step reached; the last record's values."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    for r in records:
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise CheckFailed(f"{run_dir}: step {r['step']} logged non-finite {', '.join(bad)}")
    if not records or records[-1]["step"] != steps:
        raise CheckFailed(f"{run_dir}: the log ends at step {records[-1]['step'] if records else 0}, not {steps}")
    return {k: v for k, v in records[-1].items() if k not in ("step", "time")}


def train_stage(name: str, args: list[str], run_dir: Path, steps: int, log: Path, timeout: float) -> dict:
    """Train, kill after the first checkpoint, resume to the end; check the log and the pointer."""
    t0 = time.perf_counter()
    killed_at = kill_after_first_checkpoint(s2i_command(*args, "--out", str(run_dir)), run_dir, log, timeout)
    run(s2i_command(*args, "--out", str(run_dir), "--resume"), log)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    if latest != f"step_{steps:07d}":
        raise CheckFailed(f"{run_dir}: latest checkpoint is {latest}, expected step {steps}")
    last = check_log(run_dir, steps)
    print(f"{name}: killed after step {killed_at}, resumed to {steps}; last log {fmt(last)}", flush=True)
    return {"seconds": round(time.perf_counter() - t0, 1), "killed_after": killed_at, "last": last}


def fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def check_images(folder: Path, expected: int) -> None:
    import numpy as np
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    if len(files) != expected:
        raise CheckFailed(f"{folder}: {len(files)} images, expected {expected}")
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
        if a.std() < 1.0:  # a constant picture: the model ignores its inputs or is broken
            raise CheckFailed(f"{f}: a flat image (std {a.std():.2f} of 255)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, help="RGB image folder (e.g. 1,000 face photos)")
    p.add_argument("--sketches", required=True, help="real line drawings for TOM (e.g. OpenMoji's sketch_set)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--vgg", help="VGG weights for TOM (default: the installed normalised VGG-19)")
    p.add_argument("--tiny", action="store_true", help="a few steps at 32 px: a smoke test of the check itself")
    p.add_argument("--no-speed", action="store_true", help="skip benchmarks/speed.py")
    p.add_argument("--speed-sizes", nargs="+", default=["512", "1024"])
    p.add_argument("--speed-batches", nargs="+", default=["8"])
    args = p.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    mp = ["--set", f"mixed_precision={args.precision}"]
    if args.tiny:
        size, k, tom_steps, ae_steps, gan_steps, every = 32, 2, 60, 6, 6, 2  # TOM draws lines after ~60 steps
        tom_sizes = ["--set", "g_width=8", "--set", "g_max_width=16", "--set", "d_forms=8", "--set", "d_hidden=16"]
        tom = ["--batch-size", "4", "--set", "warmup=56", "--set", "snapshot_every=2", *tom_sizes]
        ae = ["--preset", "64", "--batch-size", "4", "--set", "size=32", "--set", "width=8", "--set", "max_width=32",
              "--set", "style_dim=16", "--set", "cls_k=4"]  # fmt: skip
        gan = ["--batch-size", "2", "--set", "width=8", "--set", "levels=2"]
    else:
        size, k, tom_steps, ae_steps, gan_steps, every = args.size, 4, 400, 400, 300, 100
        tom = ["--batch-size", "32", "--set", "warmup=200", "--set", "snapshot_every=50"]
        ae = ["--preset", str(size), "--batch-size", "16"]
        gan = ["--batch-size", "16"]
    vgg = ["--set", f"vgg={Path(args.vgg).resolve()}"] if args.vgg else []
    common = ["--set", f"checkpoint_every={every}", "--set", f"sample_every={every}", *mp]
    timeout = 600.0
    summary: dict = {"device": device, "precision": args.precision, "size": size, "torch": torch.__version__}
    if device == "cuda":
        summary["card"] = torch.cuda.get_device_name(0)
    status = 0
    try:
        t0 = time.perf_counter()
        summary["tom"] = train_stage(
            "TOM",
            ["tom", "train", "--images", args.images, "--sketches", args.sketches, "--size", str(size),
             "--steps", str(tom_steps), "--snapshots", str(k), *tom, *vgg, *common],
            out / "tom", tom_steps, log, timeout,
        )  # fmt: skip
        sketch_s = run(s2i_command("tom", "sketch", "--run", str(out / "tom"), "--images", args.images,
                                   "--out", str(out / "sketches"), "--device", device), log)  # fmt: skip
        manifest = json.loads((out / "sketches" / "manifest.json").read_text())
        summary["sketch"] = {"seconds": round(sketch_s, 1), "images": len(manifest["items"]), "ink": manifest["ink"]}
        for name, r in manifest["ink"].items():
            print(f"sketches {name}: ink {r['mean_ink']:.1%}, blank {r['blank']:.0%}, solid {r['solid']:.0%}")
        data = str(out / "sketches" / "manifest.json")
        summary["ae"] = train_stage(
            "AE", ["ae", "train", "--data", data, "--steps", str(ae_steps), *ae, *common], out / "ae", ae_steps, log,
            timeout,
        )  # fmt: skip
        summary["gan"] = train_stage(
            "GAN", ["gan", "train", "--ae", str(out / "ae"), "--data", data, "--steps", str(gan_steps), *gan, *common],
            out / "gan", gan_steps, log, timeout,
        )  # fmt: skip
        run(s2i_command("export", "--tom", str(out / "tom"), "--ae", str(out / "ae"), "--gan", str(out / "gan"),
                        "--out", str(out / "model"), "--data", "gpu_check"), log)  # fmt: skip
        photos = sorted([*Path(args.images).rglob("*.jpg"), *Path(args.images).rglob("*.png")])
        inputs = out / "inputs"
        for sub, files in (("styles", photos[:2]), ("sketches", sorted((out / "sketches" / "s00").glob("*.png"))[:8])):
            (inputs / sub).mkdir(parents=True, exist_ok=True)
            for f in files:
                (inputs / sub / f.name).write_bytes(f.read_bytes())
        gen = ["generate", "--model", str(out / "model"), "--sketch", str(inputs / "sketches"),
               "--style", str(inputs / "styles"), "--out", str(out / "generated"), "--device", device]  # fmt: skip
        gen_s = run(s2i_command(*gen), log)
        n_out = len(list((inputs / "sketches").iterdir())) * len(list((inputs / "styles").iterdir()))
        check_images(out / "generated", n_out)
        run(s2i_command("transfer", "--model", str(out / "model"), "--content", str(photos[-1]), "--style",
                        str(photos[0]), "--out", str(out / "transfer.png"), "--device", device), log)  # fmt: skip
        if not (out / "transfer.png").is_file():
            raise CheckFailed(f"{out / 'transfer.png'}: style transfer wrote nothing")
        summary["generate"] = {"seconds": round(gen_s, 1), "images": n_out}
        summary["pipeline_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")  # kept if the benchmark dies
        if not args.no_speed:
            precision = {"no": "fp32"}.get(args.precision, args.precision)
            speed = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", device, "--precision",
                     precision, "--sizes", *args.speed_sizes, "--batches", *args.speed_batches,
                     "--tag", f"{device}_{precision}"]  # fmt: skip
            if args.vgg:
                speed += ["--set", f"tom.vgg={Path(args.vgg).resolve()}"]
            summary["speed_seconds"] = round(run(speed, log), 1)
        summary["ok"] = True
    except CheckFailed as e:
        print(f"gpu_check: FAILED: {e}", file=sys.stderr)
        summary["ok"], summary["error"] = False, str(e)
        status = 1
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| stage | seconds | detail |\n|---|---|---|")
    for name in ("tom", "sketch", "ae", "gan", "generate"):
        if name in summary:
            r = summary[name]
            detail = fmt(r["last"]) if "last" in r else f"{r.get('images', '')} images"
            print(f"| {name} | {r['seconds']} | {detail} |")
    print(f"\n{'OK' if status == 0 else 'FAILED'}: {summary.get('card', device)}, {args.precision}, {size} px")
    return status


if __name__ == "__main__":
    sys.exit(main())
