"""What makes a training step the same on 1 process and on N (Accelerate / torch.distributed).

``batch_size`` in every config is the *global* batch. Each step, every rank draws the same
global batch (indices, augmentation, targets) from generators seeded identically on all ranks,
then keeps its own contiguous slice of it. Losses that compare samples with each other (the
triplets' in-batch negatives) see the whole global batch through an autograd-aware all-gather,
so one step on N processes computes the same update as one process with the whole batch, and a
checkpoint holds one generator state that is valid for any number of processes. Only what
must differ per rank (the refiner's per-pixel noise) is seeded by rank.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from sketch2image.errors import S2IError


def local_rows(acc: Accelerator, global_batch: int) -> slice:
    """This rank's rows of a global batch."""
    world, rank = acc.num_processes, acc.process_index
    if global_batch % world:
        raise S2IError(
            f"batch_size {global_batch} is the global batch and must divide evenly over {world} processes; "
            f"use a multiple of {world}"
        )
    b = global_batch // world
    return slice(rank * b, (rank + 1) * b)


def gather(acc: Accelerator, x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``x`` in rank order, with gradients flowing back to each rank's own rows.

    Every rank then computes the same loss on the whole batch; the all-gather's backward sums
    the N identical gradients and DDP's averaging divides them by N again, so the update equals
    the single-process one.
    """
    if acc.num_processes == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), 0)


def rank_seed(seed: int, acc: Accelerator) -> int:
    """A seed for randomness that must differ per rank; rank 0 keeps ``seed`` (single-process runs unchanged)."""
    return seed + 1_000_003 * acc.process_index


__all__ = ["gather", "local_rows", "rank_seed"]
