"""The offline demo on built-in OpenMoji data: render → TOM → sketches → figure.

Every stage writes into one folder and is skipped or resumed when its output is already
there, so an interrupted demo continues where it stopped. (Later stages — auto-encoder,
refiner — will be chained here as they land.)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from sketch2image.configs import TOMConfig
from sketch2image.data.images import open_rgb, resize_square, to_tensor
from sketch2image.data.openmoji import render_openmoji
from sketch2image.sketcher import TOMSketcher, sketch_folder
from sketch2image.train.common import save_grid
from sketch2image.train.tom import train_tom

# The quick preset: 128 px as in the target, ~10 minutes of TOM on 2 CPU cores.
DEMO_TOM = TOMConfig()
FAST_TOM = replace(
    TOMConfig(), size=64, steps=150, warmup=60, snapshot_every=10, snapshots=10, sample_every=50, checkpoint_every=50
)


def tom_figure(run: Path, data: Path, out: Path, n: int = 6, columns: tuple[int, ...] = (0, 4, 9)) -> Path:
    """Held-out emojis: colour image | the artist's line art | TOM sketches from three snapshots."""
    manifest = json.loads((data / "manifest.json").read_text())
    sketcher = TOMSketcher.from_pretrained(run)
    size = sketcher.cfg.size
    test = manifest["ids"]["test"]
    ids = [test[int(i)] for i in torch.linspace(0, len(test) - 1, min(n, len(test)))]  # spread over the set

    def load(sub: str, emoji: str) -> torch.Tensor:
        return to_tensor(resize_square(open_rgb(data / sub / "test" / f"{emoji}.png"), size))

    images = torch.stack([load("images", i) for i in ids])
    lines = torch.stack([load("lines", i) for i in ids])
    sketches = sketcher(images)
    cols = [c for c in columns if c < sketches.shape[1]]
    columns_ = [images, lines] + [sketches[:, c : c + 1].expand(-1, 3, -1, -1) for c in cols]
    return save_grid(out, list(torch.stack(columns_, 1)))  # one row per emoji


def run_demo(out: Path, *, fast: bool = False, size: int | None = None, progress: bool = True) -> Path:
    cfg = FAST_TOM if fast else DEMO_TOM
    if size is not None:
        cfg = replace(cfg, size=size)
    cfg.validate()
    data = out / f"openmoji{cfg.size}"
    print(f"[1/3] rendering OpenMoji at {cfg.size}px -> {data}")
    render_openmoji(data, cfg.size, limit=400 if fast else None, progress=progress)
    run = out / ("tom_fast" if fast else "tom")
    print(f"[2/3] training TOM ({cfg.steps} steps, {cfg.snapshots} snapshots) -> {run}")
    train_tom(cfg, data / "images" / "train", data / "sketch_set", run, resume=True, progress=progress)
    sketches = out / ("sketches_fast" if fast else "sketches")
    print(f"[3/3] sketching the held-out emojis with every snapshot -> {sketches}")
    sketch_folder(run, data / "images" / "test", sketches, progress=progress)
    return tom_figure(run, data, out / ("tom_figure_fast.png" if fast else "tom_figure.png"))
