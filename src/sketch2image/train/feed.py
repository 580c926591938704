"""How the auto-encoder and refiner stages get their batches: seeded plans, lazy decoding, workers.

Every step has a *plan*: the global batch's dataset indices, which sketches each row uses and any
per-row random numbers (augmentation), drawn from generators seeded alike on every rank, in step
order, in the main process. The plan's rows that belong to this rank go to a ``DataLoader`` as keys
(``data/paired.py``), whose workers decode just those files while earlier steps train; uint8
tensors travel to the device and are converted there. So:

- the batches depend on the seed only, not on the number of processes or workers;
- each rank decodes only its own rows, and only the sketches the step uses;
- a checkpoint stores the generators as they were right after the last *trained* step's plan (the
  planner runs ahead by the prefetch depth), so a resumed run continues the same stream.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from sketch2image.data.paired import PairedData, PairedFiles, collate_pairs
from sketch2image.errors import InputError

log = logging.getLogger("sketch2image")


@dataclass
class StepPlan:
    """One step's global batch: indices (B,), sketch picks (B, n), per-row random numbers, generator states."""

    step: int
    index: torch.Tensor
    picks: torch.Tensor
    rand: dict[str, Any] = field(default_factory=dict)
    states: dict[str, torch.Tensor] = field(default_factory=dict)  # the generators right after this plan


def default_workers() -> int:
    """DataLoader workers per process: the CPUs this process may use, shared with the other local ranks,
    one left for the training loop itself; at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cpus // max(local, 1) - 1))


def workers_for(num_workers: int) -> int:
    """A config's ``num_workers``: -1 is ``default_workers()``."""
    return default_workers() if num_workers < 0 else num_workers


class StepBatches:
    """A batch sampler: for each step from ``first``, the plan (kept until the trainer takes it) and
    this rank's keys."""

    def __init__(self, plan: Callable[[int], StepPlan], first: int, last: int, rows: slice) -> None:
        self.plan, self.first, self.last, self.rows = plan, first, last, rows
        self.pending: dict[int, StepPlan] = {}

    def __iter__(self) -> Iterator[list[tuple[int, int, tuple[int, ...]]]]:
        for step in range(self.first, self.last + 1):
            p = self.plan(step)
            self.pending[step] = p
            index, picks = p.index[self.rows].tolist(), p.picks[self.rows].tolist()
            yield [(step, i, tuple(pk)) for i, pk in zip(index, picks, strict=True)]

    def __len__(self) -> int:
        return max(0, self.last - self.first + 1)


class Feed:
    """The batches of one run, step after step. ``next(step)`` → (uint8 batch, plan).

    ``make_plan(generators)`` returns the planning function over *copies* of the trainer's
    generators; the feed (re)starts whenever the step asked for is not the one it expects (the
    first step, or after a checkpoint was loaded).
    """

    def __init__(
        self,
        source: PairedFiles | PairedData,
        make_plan: Callable[[dict[str, torch.Generator]], Callable[[int], StepPlan]],
        generators: dict[str, torch.Generator],
        rows: slice,
        *,
        last: int,
        device: torch.device,
        num_workers: int = -1,
    ) -> None:
        # A trainer's planner is its bound method: held weakly, so that trainer and feed hold no cycle and
        # the DataLoader's workers end when the trainer goes, not whenever the cyclic GC runs (it can run
        # inside an import, where shutting workers down deadlocks).
        self.make_plan = weakref.WeakMethod(make_plan) if inspect.ismethod(make_plan) else lambda: make_plan
        self.source, self.generators, self.rows = source, generators, rows
        self.last, self.device = last, device
        lazy = isinstance(source, PairedFiles)
        self.num_workers = workers_for(num_workers) if lazy else 0
        self.expect: int | None = None
        self.reported: set[str] = set()
        self.n_broken = 0
        self._it: Iterator | None = None
        self._batches: StepBatches | None = None

    def _start(self, step: int) -> None:
        self.close()
        copies = {}
        for name, g in self.generators.items():
            copies[name] = torch.Generator().set_state(g.get_state())
        self._batches = StepBatches(self.make_plan()(copies), step, max(self.last, step), self.rows)
        workers = self.num_workers
        loader = DataLoader(
            self.source,
            batch_sampler=self._batches,
            num_workers=workers,
            collate_fn=collate_pairs,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=workers > 0,
            # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG,
            # which the refiner's noise uses.
            generator=torch.Generator().manual_seed(0),
        )
        self._it = iter(loader)
        self.expect = step

    def next(self, step: int) -> tuple[dict[str, Any], StepPlan]:
        if step != self.expect or self._it is None:
            self._start(step)
        try:
            batch = next(self._it)
        except StopIteration:  # asked past the run's last step (tests): plan further
            self.last = step
            self._start(step)
            batch = next(self._it)
        plan = self._batches.pending.pop(step)
        if batch["step"] != step:
            raise RuntimeError(f"data feed out of order: step {step} got the batch of step {batch['step']}")
        self.expect = step + 1
        for why in batch["broken"]:
            self.n_broken += 1
            if why not in self.reported:
                self.reported.add(why)
                log.warning("skipping an unreadable pair (replaced by the next readable one): %s", why)
        if "fatal" in batch:
            raise InputError(f"{self.source.index.manifest if hasattr(self.source, 'index') else 'data'}: "
                             f"{batch['fatal']}; is the data folder still there?")  # fmt: skip
        for name, g in self.generators.items():  # what a checkpoint after this step must hold
            g.set_state(plan.states[name])
        return batch, plan

    def close(self) -> None:
        """End the DataLoader's workers now (a run's end, or an error)."""
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._it = None


def states(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in generators.items()}


__all__ = ["Feed", "StepBatches", "StepPlan", "default_workers", "states", "workers_for"]
