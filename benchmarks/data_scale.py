"""Memory and startup of the data path as the data set grows: peak RSS, time to first step, loader speed.

Synthetic pairs at 512 px (smooth colour fields with shapes as JPEG images; line drawings as PNG
sketches, K = 4 per image) for N = 150 / 600 / 2,400. For each N, the real commands in a fresh
process, with tiny networks so that what is measured is the data path, not the model:

- ``s2i ae train`` and ``s2i gan train`` (3 steps, batch 4): peak RSS of the main process and of the
  whole process tree (main + DataLoader workers, sampled every 50 ms), and seconds from launch to
  the end of step 1 (imports, manifest scan, ink sample, first batch, first step);
- ``s2i eval`` on the first N images with their s00 sketches as the held-out set (psnr, ssim).

Then the loader alone: pairs per second (one image + the 2 sketches an AE step decodes) with 0, 1
and 2 workers. Optionally (``--old SRC``) the in-memory reader of an earlier version for the smaller
N, run the same way, for contrast.

    python benchmarks/data_scale.py                 # writes benchmarks/results/data_scale.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
from common import machine
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent
SIZE, K = 512, 4
TINY_AE = ["width=4", "max_width=32", "style_dim=32", "cls_k=16", "log_every=1", "checkpoint_every=1000",
           "sample_every=1000"]  # fmt: skip
TINY_GAN = ["width=4", "max_width=16", "levels=3", "d_width=8", "log_every=1", "checkpoint_every=1000",
            "sample_every=1000"]  # fmt: skip


def make_data(root: Path, n: int) -> None:
    """n synthetic images (JPEG) and K sketches each (PNG), written once; reused by every N."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img_path = root / "images" / f"{i:05d}.jpg"
        if img_path.exists() and all((root / "sk" / f"s{j:02d}" / f"{i:05d}.png").exists() for j in range(K)):
            continue
        rng = random.Random(i)
        low = Image.new("RGB", (4, 4))
        low.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(16)])
        img = low.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        d = ImageDraw.Draw(img)
        shapes = [(rng.randrange(SIZE), rng.randrange(SIZE), rng.randrange(20, 160)) for _ in range(6)]
        for x, y, r in shapes:
            d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
        img.filter(ImageFilter.GaussianBlur(2)).save(img_path, quality=90)
        for j in range(K):
            sk = Image.new("L", (SIZE, SIZE), 255)
            ds = ImageDraw.Draw(sk)
            for x, y, r in shapes:
                jitter = rng.randrange(-6, 7)
                ds.ellipse((x - r + jitter, y - r, x + r, y + r - jitter), outline=0, width=2 + j % 2)
            path = root / "sk" / f"s{j:02d}" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            sk.save(path)


def manifest(root: Path, n: int) -> Path:
    items = [{"id": f"{i:05d}", "image": f"{i:05d}.jpg", "sketches": [f"s{j:02d}/{i:05d}.png" for j in range(K)]}
             for i in range(n)]  # fmt: skip
    path = root / "sk" / f"manifest_{n}.json"
    # An absolute image root: the earlier in-memory reader (--old) reads no other kind.
    path.write_text(json.dumps({"format": "sketch2image.sketches/1", "images_root": str((root / "images").resolve()),
                                "size": SIZE, "items": items}))  # fmt: skip
    return path


def measure(cmd: list[str], env: dict, log: Path | None, timeout: float = 1800) -> dict:
    """Run a command; peak RSS of its main process and of its whole process tree; launch → step 1."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    main_p = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            tree = [main_p, *main_p.children(recursive=True)]
            rss = [p.memory_info().rss for p in tree]
            peak_main, peak_tree = max(peak_main, rss[0]), max(peak_tree, sum(rss))
        except psutil.Error:
            pass
        time.sleep(0.05)
        if time.time() - t0 > timeout:
            proc.kill()
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    first = None
    if log is not None and log.is_file():
        first = json.loads(log.read_text().splitlines()[0])["time"] - t0
    return {"peak_rss_mb": round(peak_main / 2**20), "peak_rss_tree_mb": round(peak_tree / 2**20),
            "first_step_s": round(first, 2) if first is not None else None,
            "wall_s": round(time.time() - t0, 1)}  # fmt: skip


def loader_speed(man: Path, workers: int, batches: int = 12, batch: int = 8) -> float:
    """Pairs per second through the training feed (image + 2 sketches each), after one warm-up batch."""
    import torch

    from sketch2image.data.paired import PairedFiles
    from sketch2image.train.feed import Feed, StepPlan

    files = PairedFiles.from_manifest(man, SIZE, ink_check=False)

    def make_plan(gens):
        g = gens["g"]

        def plan(step: int) -> StepPlan:
            idx = torch.randperm(len(files), generator=g)[:batch]
            return StepPlan(step, idx, torch.randint(K, (batch, 2), generator=g), {}, {"g": g.get_state()})

        return plan

    feed = Feed(files, make_plan, {"g": torch.Generator().manual_seed(0)}, slice(0, batch), last=batches + 1,
                device=torch.device("cpu"), num_workers=workers)  # fmt: skip
    feed.next(1)
    t = time.perf_counter()
    for s in range(2, batches + 2):
        feed.next(s)
    rate = batches * batch / (time.perf_counter() - t)
    feed.close()
    return round(rate, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT.parent / "runs" / "data_scale"), help="synthetic data and runs")
    ap.add_argument("--sizes", default="150,600,2400")
    ap.add_argument("--old", help="src folder of an earlier version: its in-memory reader, for the smaller N")
    ap.add_argument("--out", default=str(ROOT / "results" / "data_scale"))
    args = ap.parse_args()
    ns = [int(x) for x in args.sizes.split(",")]
    work = Path(args.work)
    t = time.time()
    make_data(work / "data", max(ns))
    print(f"data ready ({time.time() - t:.0f} s)")
    # glibc's default allocator here: the speed protocol's MALLOC_MMAP_MAX_=0 / huge trim threshold keep every
    # freed temporary in the heap, and over N/16 evaluation batches its fragmentation grew peak RSS with N
    # (3.4 -> 10.6 GB from 150 to 2,400 images; 2.87 -> 2.92 GB with the default allocator).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["OMP_NUM_THREADS"] = "2"
    s2i = [sys.executable, "-m", "sketch2image"]
    rows = []
    for n in ns:
        man = manifest(work / "data", n)
        runs = work / "runs" / str(n)
        subprocess.run(["rm", "-rf", str(runs)], check=True)
        ae = ["ae", "train", "--data", str(man), "--preset", str(SIZE), "--steps", "3", "--batch-size", "4",
              *[a for kv in TINY_AE for a in ("--set", kv)]]  # fmt: skip
        row = {"n": n, "ae": measure([*s2i, *ae, "--out", str(runs / "ae")], env, runs / "ae" / "log.jsonl")}
        gan = ["gan", "train", "--ae", str(runs / "ae"), "--data", str(man), "--steps", "3", "--batch-size", "4",
               *[a for kv in TINY_GAN for a in ("--set", kv)]]  # fmt: skip
        row["gan"] = measure([*s2i, *gan, "--out", str(runs / "gan")], env, runs / "gan" / "log.jsonl")
        ev = ["eval", "--model", str(runs / "ae"), "--images", str(work / "data" / "images"), "--sketches",
              str(work / "data" / "sk" / "s00"), "--limit", str(n), "--metrics", "psnr,ssim", "--batch-size", "16",
              "--out", str(runs / "eval.json")]  # fmt: skip
        row["eval"] = measure([*s2i, *ev], env, None)
        if args.old and n <= 600:
            old_env = {**env, "PYTHONPATH": args.old}
            row["ae_in_memory"] = measure([*s2i, *ae, "--out", str(runs / "ae_old")], old_env,
                                          runs / "ae_old" / "log.jsonl")  # fmt: skip
        print(json.dumps(row))
        rows.append(row)
    man = manifest(work / "data", max(ns))
    speed = {f"workers_{w}": loader_speed(man, w) for w in (0, 1, 2)}
    print("loader pairs/s:", speed)
    result = {"machine": {**machine(2), "allocator": "glibc default (see main)"}, "size": SIZE, "k": K, "rows": rows,
              "loader_pairs_per_s": speed,
              "command": "python benchmarks/data_scale.py" + (" --old SRC" if args.old else "")}  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [f"Synthetic pairs at {r['size']} px, K = {r['k']}; tiny networks, 3 steps at batch 4; "
             f"{r['machine']['cpu']}, {r['machine']['threads']} threads.", "",
             "| N | stage | peak RSS, main (MB) | peak RSS, with workers (MB) | launch → step 1 (s) | wall (s) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in r["rows"]:
        for stage in ("ae", "gan", "eval", "ae_in_memory"):
            if stage in row:
                m = row[stage]
                first = m["first_step_s"] if m["first_step_s"] is not None else "–"
                lines.append(f"| {row['n']:,} | {stage} | {m['peak_rss_mb']:,} | {m['peak_rss_tree_mb']:,} | "
                             f"{first} | {m['wall_s']} |")  # fmt: skip
    speed = ", ".join(f"{k.split('_')[1]} workers: {v}" for k, v in r["loader_pairs_per_s"].items())
    lines += ["", f"Loader alone (one image + 2 sketches per pair, {r['size']} px): pairs/s with {speed}.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ns = [row["n"] for row in r["rows"]]
    for stage in ("ae", "gan", "eval", "ae_in_memory"):
        pts = [(row["n"], row[stage]) for row in r["rows"] if stage in row]
        if not pts:
            continue
        ax[0].plot([n for n, _ in pts], [m["peak_rss_mb"] for _, m in pts], "o-", label=stage)
        if stage != "eval":
            ax[1].plot([n for n, _ in pts], [m["first_step_s"] for _, m in pts], "o-", label=stage)
    for a, title in zip(ax, ("peak RSS of the main process (MB)", "launch → end of step 1 (s)"), strict=True):
        a.set_xscale("log")
        a.set_xticks(ns, [f"{n:,}" for n in ns])
        a.set_xlabel("images in the data set")
        a.set_title(title, fontsize=10)
        a.set_ylim(bottom=0)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
