"""The measurement protocol of ../shared/BENCHMARKING.md, shared by every speed benchmark.

2 threads, glibc allocator settings recorded, one untimed step, 2 warm-ups, then the median
(with min and max) of at least 7 timed iterations (15 for inference); peak RSS; FLOPs per
iteration counted by torch's own FlopCounterMode.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def setup(threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    return machine(threads)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int) -> dict:
    return {
        "cpu": cpu_model(),
        # the kernels torch picked (AVX2, AVX512, ...): training results differ between them in the last bits
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "allocator": {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")},
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(device: str = "cpu", n: int = 4096, iters: int = 5) -> float:
    """The machine's ceiling for the "fraction of peak" column: a plain large fp32 ``torch.mm``."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return 2 * n**3 / timed(lambda: (a @ b, sync()), iters, warmup=0)["median_s"] / 1e9


def timed(fn: Callable[[], object], iters: int, warmup: int = 2) -> dict:
    fn()  # untimed first step (allocations, lazy init)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "iters": iters}


COLUMNS = [
    "stage",
    "size",
    "batch",
    "median_s",
    "range_s",
    "it_per_s",
    "gflop_per_it",
    "gflop_per_s",
    "params",
    "peak_rss_mb",
]


def finish_rows(rows: list[dict]) -> list[dict]:
    """Round raw measurements (``median_s``, ``min_s``, ``max_s``, ``flops``, ``items``) into table columns."""
    for r in rows:
        r["range_s"] = f"{r['min_s']:.3f}-{r['max_s']:.3f}"
        r["it_per_s"] = round(r.get("items", 1) / r["median_s"], 2)
        r["gflop_per_it"] = round(r["flops"] / 1e9, 1)
        r["gflop_per_s"] = round(r["flops"] / 1e9 / r["median_s"], 1)
        r["median_s"] = round(r["median_s"], 4)
        r["peak_rss_mb"] = round(r["peak_rss_mb"])
    return rows


def write(results: dict, name: str, table: list[dict], columns: list[str] = COLUMNS) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and a markdown table ``results/<name>.md``."""
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    jpath.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        f"# {name}",
        "",
        f"{m['cpu']}, torch {m['torch']}, {m['threads']} threads, allocator {m['allocator']}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in table]
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath
