"""Several processes on one job outside training (``s2i eval``, ``s2i tom sketch``): who am I, gather.

Under torchrun / ``accelerate launch`` the environment names the world; the process group is made
here on first use (NCCL with GPUs, gloo otherwise). Jobs split their batches by ``rank::world``
and gather small Python objects (per-sample values, features, file lists) to put them back in order.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def world() -> tuple[int, int]:
    """(processes, this process's index): (1, 0) unless launched with a WORLD_SIZE above 1."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size < 2 or not torch.distributed.is_available():
        return 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_world_size(), dist.get_rank()


def gather(obj: Any, size: int) -> list[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` in one process)."""
    if size < 2:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


__all__ = ["gather", "world"]
