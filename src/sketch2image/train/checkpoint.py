"""Resumable training state as safetensors + JSON, written atomically.

A checkpoint is a folder ``checkpoints/step_0000123/`` holding ``state.safetensors`` (model
weights, optimiser moments, RNG states) and ``meta.json`` (step, config, optimiser
hyper-parameters, Python RNG). It is written under a temporary name and renamed into place,
and ``checkpoints/latest`` is replaced the same way, so a run killed at any moment leaves
the previous checkpoint intact. Nothing is pickled.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sketch2image.errors import CheckpointError
from sketch2image.storage import (
    CHECKPOINT_FORMAT,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    load_weights,
    read_document,
    refuse_non_finite,
    save_tensors,
)


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    load_weights(module, sub, source, f"weights for '{prefix}'")


def optimizer_state(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (moments) and JSON (hyper-parameters)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{prefix}.state.{pid}.{key}"] = val
            else:
                plain.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    head = prefix + ".state."
    for k, v in tensors.items():
        if k.startswith(head):
            pid, key = k[len(head) :].split(".", 1)
            state.setdefault(int(pid), {})[key] = v
    for pid, extra in meta.get("plain", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    # Hyper-parameters come from the checkpoint; how the step is computed (fused kernel or not) stays
    # this run's choice, so a run saved before the fused optimiser resumes with it.
    groups = [
        {**saved, **{k: now[k] for k in IMPLEMENTATION_FLAGS if k in now}}
        for saved, now in zip(meta["param_groups"], opt.param_groups, strict=False)
    ] + meta["param_groups"][len(opt.param_groups) :]
    opt.load_state_dict({"state": state, "param_groups": groups})
    match_parameters(opt)


def match_parameters(opt: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor its parameter's device, dtype and memory layout.

    ``load_state_dict`` moves moments to the parameter's device and dtype but keeps the layout of
    what was saved (contiguous), while channels_last parameters on CUDA are not: the fused Adam
    kernel then refuses the step ("must have same dtype, device, and layout").
    """
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key, val in st.items():
                if torch.is_tensor(val) and val.shape == p.shape and val.stride() != p.stride():
                    st[key] = torch.empty_like(p, dtype=val.dtype).copy_(val)


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` atomically, point ``latest`` at it, prune old ones."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    refuse_non_finite(tensors, final)
    with atomic_dir(final) as tmp:
        save_tensors(tensors, tmp / "state.safetensors")
        atomic_write_json(tmp / "meta.json", {"format": CHECKPOINT_FORMAT, "step": step, **meta})
    atomic_write_text(root / "latest", final.name + "\n")
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[: max(0, len(done) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "state.safetensors").is_file() or not (path / "meta.json").is_file():
        raise CheckpointError(f"{path}: checkpoint named by {pointer} is incomplete")
    return path


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = read_document(path / "meta.json", (CHECKPOINT_FORMAT,), "checkpoint description")
    return load_tensors(path / "state.safetensors"), meta


def training_state(
    unwrap,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights, optimiser state, RNG and the loop's own generators, ready for ``save_checkpoint``."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, module in modules.items():
        tensors.update(module_tensors(name, unwrap(module)))
    for name, opt in optimizers.items():
        t, meta[name] = optimizer_state(name, opt)
        tensors.update(t)
    t, meta["rng"] = rng_state()
    tensors.update(t)
    tensors.update({name: g.get_state() for name, g in (generators or {}).items()})
    return tensors, meta


def restore_training_state(
    unwrap,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator] | None,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    source: str,
) -> None:
    for name, module in modules.items():
        load_module(name, unwrap(module), tensors, source)
    for name, opt in optimizers.items():
        load_optimizer(name, opt, tensors, meta[name])
    set_rng_state(tensors, meta["rng"])
    for name, g in (generators or {}).items():
        if name in tensors:  # a checkpoint of an older version lacks it: the generator keeps its seed
            g.set_state(tensors[name])


class Checkpointed:
    """``state``/``load_state`` of a trainer from its ``_parts()``: (modules, optimisers, generators)."""

    acc: Any

    def _parts(self) -> tuple[dict, dict, dict]:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return training_state(self.acc.unwrap_model, *self._parts())

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, source: str) -> None:
        restore_training_state(self.acc.unwrap_model, *self._parts(), tensors, meta, source)


def resume_step(run_dir: Path, load: Any, resume: bool, acc: Any = None) -> int:
    """Load the latest checkpoint of ``run_dir`` through ``load(tensors, meta, source)``; its step, or 0.

    With an Accelerator, the main process names the checkpoint and every rank loads that one, so the
    ranks cannot resume from different steps.
    """
    if not resume:
        return 0
    if acc is None:
        latest = latest_checkpoint(run_dir)
    else:
        from sketch2image.train.distributed import on_main

        latest = on_main(acc, lambda: latest_checkpoint(run_dir))
        if latest is not None and not (latest / "meta.json").is_file():
            raise CheckpointError(f"{latest}: checkpoint not visible from rank {acc.process_index}; is the run "
                                  "folder shared between the machines?")  # fmt: skip
    if latest is None:
        return 0
    tensors, meta = load_checkpoint(latest)
    load(tensors, meta, str(latest))
    logging.getLogger("sketch2image").info("resuming %s from step %d", run_dir, meta["step"])
    return int(meta["step"])
