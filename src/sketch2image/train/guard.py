"""Training that cannot fail silently: every optimiser update of every stage goes through here.

``FiniteGuard.update`` does backward, the gradient norm (clipped when asked) and the optimiser
step; ``end_step`` then checks every loss term and gradient norm of the step in one transfer from
the device (no extra GPU synchronisation between the updates) and stops the run with one line
naming the stage, the step and the term. The loop calls it before it logs or saves anything, so
nothing from that step is written and the last checkpoint stays the last good one.
``check_weights`` runs before anything is written (checkpoint, TOM snapshot, model folder) as a
second line of defence.

With fp16 mixed precision the grad scaler owns overflow: a step whose gradients overflow is
skipped and the scale lowered. That is normal and not an error, unless it happens
``max_skips`` times in a row (the scale has collapsed: the run is diverging).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from sketch2image.errors import S2IError
from sketch2image.storage import first_non_finite

MAX_CONSECUTIVE_SKIPS = 25


class NonFiniteError(S2IError):
    """A loss, gradient or weight became NaN or infinite; training stopped before saving it."""


def _total_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The global L2 norm of a list of gradients, without the rescaling pass clipping would make."""
    if not grads:
        return torch.zeros((), device=device)
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _describe(t: torch.Tensor) -> str:
    t = t.detach()
    if t.numel() == 1:
        return f"{t.item()}"
    bad = ~torch.isfinite(t)
    return f"{int(bad.sum())} of {t.numel()} values non-finite"


class FiniteGuard:
    """One per training run. ``step`` is set by the loop; messages name it."""

    def __init__(self, stage: str, acc, run_dir: Path | None = None, max_skips: int = MAX_CONSECUTIVE_SKIPS) -> None:
        self.stage, self.acc, self.max_skips = stage, acc, max_skips
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.scaled = getattr(acc, "scaler", None) is not None  # fp16: the grad scaler skips overflowing steps
        self.step = 0
        self.skipped = 0  # fp16 steps the scaler skipped, in total
        self._in_a_row = 0
        self._pending: list[tuple] = []  # (what, grad norm, loss terms, optimisers) of this step's updates

    # --- messages -----------------------------------------------------------------------
    def _where(self) -> str:
        pointer = self.run_dir / "checkpoints" / "latest" if self.run_dir is not None else None
        last = pointer.read_text().strip() if pointer is not None and pointer.is_file() else None
        kept = f"the last good checkpoint, {last}, is kept" if last else "no checkpoint had been written yet"
        return (
            f"; training stopped at this step and nothing was saved from it ({kept}). "
            "Try a lower learning rate, mixed_precision=no, or max_grad_norm=1"
        )

    def error(self, what: str, value: str) -> NonFiniteError:
        return NonFiniteError(f"{self.stage} step {self.step}: non-finite {what} ({value}){self._where()}")

    # --- checks -------------------------------------------------------------------------
    def _agree(self, bad: bool) -> bool:
        """Every rank takes the same decision, or the healthy ones would wait forever for the one that stopped."""
        if self.acc.num_processes == 1:
            return bad
        flag = torch.tensor([float(bad)], device=self.acc.device)
        return bool(self.acc.reduce(flag, "sum").item() > 0)

    def update(
        self,
        opt: torch.optim.Optimizer | list[torch.optim.Optimizer],
        loss: torch.Tensor,
        params: Iterable[torch.nn.Parameter],
        terms: dict[str, torch.Tensor],
        what: str,
        max_grad_norm: float = 0.0,
    ) -> None:
        """zero_grad, backward, gradient norm (+ clipping), optimiser step(s); the checks wait for ``end_step``.

        ``terms`` are the named loss terms (for the message); ``what`` names the updated network.
        Nothing here waits for the GPU: the finiteness flags stay on the device until ``end_step``.
        """
        opts = opt if isinstance(opt, list) else [opt]
        for o in opts:
            o.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        if self.scaled:
            self.acc.unscale_gradients(opts)
        grads = [p for p in params if p.grad is not None]
        if max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(grads, max_grad_norm)
        else:
            norm = _total_norm([p.grad for p in grads], self.acc.device)
        for o in opts:
            o.step()  # under fp16 the scaler skips it when the gradients overflowed
        self._pending.append((what, norm.detach(), {k: v.detach() for k, v in terms.items()}, opts))

    def end_step(self) -> dict[str, float]:
        """Check this step's loss terms and gradient norms (one transfer from the device); the norms.

        A non-finite value raises here, before the loop can save anything from this step's weights.
        Under fp16 a step the grad scaler skipped is counted instead (an error after ``max_skips`` in a row).
        """
        pending, self._pending = self._pending, []
        names: list[tuple[str, str, torch.Tensor]] = []
        for what, norm, terms, _ in pending:
            names += [(f"loss term '{k}'", what, v) for k, v in terms.items()]
            names.append((f"gradient norm of {what}", what, norm))
        if not names:
            return {}
        flags = torch.stack([torch.isfinite(v.float()).all() for _, _, v in names]).float()
        norms = torch.stack([norm.float() for _, norm, _, _ in pending])
        values = torch.cat([flags, norms]).tolist()
        ok = values[: len(names)]
        result = {what: v for (what, *_), v in zip(pending, values[len(names) :], strict=True)}
        bad = self._agree(not all(ok))
        if self.scaled:
            self._count_skip(bad or any(getattr(o, "step_was_skipped", False) for *_, opts in pending for o in opts))
            return result
        if bad:
            first = next((n for n, good in zip(names, ok, strict=True) if not good), None)
            if first is None:
                raise self.error("loss on another process", "see that process's log")
            raise self.error(first[0], _describe(first[2]))
        return result

    def _count_skip(self, skipped: bool) -> None:
        if not skipped:
            self._in_a_row = 0
            return
        self.skipped += 1
        self._in_a_row += 1
        if self._in_a_row >= self.max_skips:
            raise NonFiniteError(
                f"{self.stage} step {self.step}: the fp16 grad scaler skipped {self._in_a_row} steps in a row "
                f"(non-finite gradients every step: the run is diverging){self._where()}"
            )

    def check_weights(self, tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Raise before anything is written from weights (or optimiser state) holding NaN/inf."""
        items = tensors.items() if isinstance(tensors, dict) else tensors
        bad = first_non_finite(items)
        if bad is not None:
            raise self.error(f"weights '{bad[0]}'", _describe(bad[1]))


__all__ = ["FiniteGuard", "NonFiniteError", "first_non_finite", "MAX_CONSECUTIVE_SKIPS"]
