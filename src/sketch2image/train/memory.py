"""Before a stage starts: about how much memory it will hold, against what the machine has.

The kernel's OOM killer ends a run without a word, often after many minutes of startup; a readable
error before the first step is better. The estimate is coarse on purpose (weights, gradients and
Adam moments; activations from a per-pixel rate measured on the auto-encoder; the DataLoader's
in-flight batches) and errs high: it refuses only what clearly cannot fit, warns when it is close,
and a GPU that runs out anyway at the first step gets the same kind of message (``run_steps``).
"""

from __future__ import annotations

import logging
import os

import torch

from sketch2image.errors import S2IError

log = logging.getLogger("sketch2image")

# fp32 training activations per image, per pixel and per channel of full-resolution width: the auto-encoder's
# peak RSS grows by 37 MB per image at 64 px (width 32), 143 MB at 128 px (width 32) and 319 MB at 256 px
# (width 16) on the CPU (benchmarks/results/ae_speed.md): 280-300 bytes per pixel per unit of width.
ACTIVATION_BYTES = 300
PREFETCH = 4  # batches in flight per DataLoader worker (train/feed.py)
SKIP_ENV = "S2I_SKIP_MEMORY_CHECK"
MEMORY_ADVICE = ("Lower --batch-size, --set num_workers=N, or --set grad_checkpoint=true / "
                 "mixed_precision=bf16 (GPU)")  # fmt: skip


def estimate(
    trained: int, frozen: int, width: int, size: int, local_batch: int, workers: int, planes: int, half: bool
) -> dict[str, int]:
    """Bytes a training process holds: network states, activations, and the data in flight.

    ``trained``/``frozen``: parameter counts (the trained ones carry gradients and two Adam moments);
    ``planes``: uint8 planes per pair (3 for the image + one per sketch read); ``half``: bf16/fp16.
    """
    return {
        "weights, gradients, Adam": trained * 16 + frozen * 4,
        "activations": ACTIVATION_BYTES * width * size * size * local_batch // (2 if half else 1),
        "batches in flight": (workers * PREFETCH + 2) * local_batch * size * size * planes * 2,  # decoded + collated
    }


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_memory(stage: str, need: dict[str, int], device: torch.device, advice: str) -> None:
    """Refuse a run whose estimate exceeds what is free (RAM on the CPU, memory on the GPU); warn near it."""
    if os.environ.get(SKIP_ENV):
        return
    if device.type == "cuda":  # the batches in flight are in RAM, a small share of it
        need = {k: v for k, v in need.items() if k != "batches in flight"}
    total = sum(need.values())
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in need.items())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"free on {torch.cuda.get_device_name(device)}"
    else:
        import psutil

        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        free = psutil.virtual_memory().available // max(local, 1)
        where = "of RAM available" + (f" per process ({local} on this machine)" if local > 1 else "")
    said = f"{stage}: needs about {_gb(total)} ({parts}), {_gb(free)} {where}"
    if total > free:
        raise S2IError(f"{said}. {advice} (the estimate is coarse: set {SKIP_ENV}=1 to try anyway)")
    if total > 0.8 * free:
        log.warning("%s: close to the limit. %s", said, advice)


__all__ = ["ACTIVATION_BYTES", "MEMORY_ADVICE", "check_memory", "estimate", "fixed_mmap_threshold"]


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, held fixed


def fixed_mmap_threshold() -> bool:
    """Hold glibc's mmap threshold at its starting value so large freed buffers go back to the kernel.

    glibc raises the threshold each time a large mmapped buffer is freed, after which buffers of that
    size come from the heap, where a long run of differently sized activations fragments it: the peak
    RSS of ``s2i eval`` at 512 px on the CPU crept up ~0.4 MB per held-out image although nothing was
    kept. A fixed threshold keeps it flat (benchmarks/data_scale.py) for 12-16 % more time there.
    Does nothing off glibc, or when the user set ``MALLOC_MMAP_THRESHOLD_`` themselves.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
