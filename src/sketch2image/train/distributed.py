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

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator

from sketch2image.errors import S2IError

T = TypeVar("T")


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


def on_main(acc: Accelerator, fn: Callable[[], T]) -> T:
    """``fn()`` run on the main process only; its result, or the same readable error, on every rank.

    For startup work that would cost N times as much on N ranks (scanning a data set, sampling its
    sketches) and must stop every rank alike when it fails.
    """
    if acc.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box: list = [None]
    if acc.is_main_process:
        try:
            box = [("ok", fn())]
        except S2IError as e:
            box = [("error", type(e), str(e))]
    broadcast_object_list(box, from_process=0)
    if box[0][0] == "error":
        raise box[0][1](box[0][2])
    return box[0][1]


def check_shared(acc: Accelerator, run_dir: Path) -> None:
    """Stop every rank with one readable error when the run folder is not the same folder on every machine.

    Checkpoints are written by the main process and read back by every rank on resume, so a run folder
    local to each node would silently resume one node and restart the others.
    """
    if acc.num_processes == 1:
        return
    import secrets
    import socket

    from accelerate.utils import gather_object

    marker = Path(run_dir) / ".shared-check"
    token = on_main(acc, lambda: _write_marker(marker, secrets.token_hex(8)))
    try:
        seen = marker.read_text().strip() == token
    except OSError:
        seen = False
    report = gather_object([(acc.process_index, socket.gethostname(), seen)])
    acc.wait_for_everyone()
    if acc.is_main_process:
        marker.unlink(missing_ok=True)
    blind = [(rank, host) for rank, host, ok in report if not ok]
    if blind:
        who = ", ".join(f"rank {rank} on {host}" for rank, host in blind[:4])
        raise S2IError(
            f"{run_dir}: the run folder is not shared between the processes of this run ({who} cannot see what "
            "rank 0 writes there); put --out on a file system every machine mounts at the same path"
        )


def _write_marker(path: Path, token: str) -> str:
    path.write_text(token + "\n")
    return token


def load_pairs(acc: Accelerator, manifest: str | Path, size: int | None):
    """The lazy paired data set of a manifest: scanned and ink-checked once, on the main process."""
    from sketch2image.data.paired import PairedFiles, PairIndex

    def scan() -> PairIndex:
        index = PairIndex.scan(manifest, size)
        index.check_ink()
        return index

    return PairedFiles(on_main(acc, scan))


__all__ = ["check_shared", "gather", "load_pairs", "local_rows", "on_main", "rank_seed"]
