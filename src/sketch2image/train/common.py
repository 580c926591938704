"""Pieces every stage's training loop shares: run folders, logs, sample grids, seeding."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from sketch2image.configs import from_dict, to_dict
from sketch2image.errors import S2IError
from sketch2image.train.checkpoint import atomic_write_json


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class JsonlLog:
    """Append-only JSON-lines log: a run's history is data, not log text."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def save_grid(path: Path, rows: list[torch.Tensor], pad: int = 2) -> Path:
    """Save rows of equally sized images (each (N, C, H, W) in [0, 1]) as one PNG grid."""
    rows = [r.detach().float().cpu().clamp(0, 1) for r in rows]
    rows = [r.expand(-1, 3, -1, -1) if r.shape[1] == 1 else r for r in rows]
    n = max(r.shape[0] for r in rows)
    tiles = []
    for r in rows:
        if r.shape[0] < n:
            r = torch.cat([r, torch.ones(n - r.shape[0], *r.shape[1:])])
        tiles.append(r)
    grid = make_grid(torch.cat(tiles), nrow=n, padding=pad, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_image(grid, tmp)
    tmp.replace(path)
    return path


def prepare_run_dir(run_dir: Path, cfg: Any, resume: bool, mutable: tuple[str, ...] = ("steps",)) -> Any:
    """Create the run folder, or check that an existing one was started with the same config.

    Only keys in ``mutable`` (e.g. the step budget) may change on resume; anything else would
    silently mix two experiments in one folder.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        if not resume:
            raise S2IError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --out")
        old = from_dict(type(cfg), json.loads(cfg_path.read_text()), str(cfg_path))
        new_d, old_d = to_dict(cfg), to_dict(old)
        diff = sorted(k for k in new_d if new_d[k] != old_d[k] and k not in mutable)
        if diff:
            raise S2IError(
                f"{run_dir}: was started with different {', '.join(diff)}; use a new --out for a different config"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, to_dict(cfg))
    return cfg
