"""The machine's ceilings, to read the speed tables against: what no network can beat here.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/floor.py

- ``mm``: a plain 4096² fp32 ``torch.mm`` (GFLOP/s) -- the issue's reference ceiling.
- ``conv3x3``: a 3×3 convolution, 256→256 channels on 64² at batch 8 (GFLOP/s).
- ``weights``: batch-1 inference must read every weight once. A chain of 1024×1024 fp32
  matrix-vector products holding ``--params`` parameters in all (default 47.6 M, the published
  auto-encoder) gives the time that reading alone costs, and the memory bandwidth it implies.

Same protocol as the speed tables (2 threads, median of timed repeats after warm-up).
Results: ``results/floor.json`` + ``floor.md``.
"""

from __future__ import annotations

import argparse

import torch
from common import matmul_gflops, setup, timed, write
from torch.nn import functional as F


def median_s(fn) -> float:
    return timed(fn, iters=15)["median_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=47.6e6, help="parameters read per batch-1 forward")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    machine = setup(args.threads)
    rows = []
    mm = matmul_gflops()
    rows.append({"what": "fp32 torch.mm 4096²", "value": round(mm, 1), "unit": "GFLOP/s"})
    x, w = torch.randn(8, 256, 64, 64), torch.randn(256, 256, 3, 3)
    t = median_s(lambda: F.conv2d(x, w, padding=1))
    conv_gflop = 2 * 8 * 256 * 256 * 9 * 64 * 64 / 1e9
    rows.append({"what": "3x3 conv 256->256, 64², batch 8", "value": round(conv_gflop / t, 1), "unit": "GFLOP/s"})
    n = max(1, round(args.params / 2**20))
    mats, v = [torch.randn(1024, 1024) for _ in range(n)], torch.randn(1, 1024)
    t = median_s(lambda: [v @ m for m in mats])
    rows.append({"what": f"read {n * 2**20 / 1e6:.1f} M fp32 weights once (batch-1 matvec chain)",
                 "value": round(t * 1000, 2), "unit": "ms"})  # fmt: skip
    rows.append({"what": "implied memory bandwidth", "value": round(4 * n * 2**20 / t / 1e9, 1), "unit": "GB/s"})
    for r in rows:
        print(f"{r['what']:<60} {r['value']:>8} {r['unit']}")
    write({"machine": machine, "rows": rows}, "floor", rows, ["what", "value", "unit"])


if __name__ == "__main__":
    main()
