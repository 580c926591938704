"""Shared fixtures: tiny image folders and configs so the whole suite runs on a CPU in minutes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sketch2image.configs import AEConfig, GANConfig, TOMConfig
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.blocks import StyleInjection
from sketch2image.nets.refiner import Refiner
from sketch2image.pipeline import Sketch2Image
from sketch2image.train.tom import train_tom


def _shapes(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(size[0] - 10), rng.randrange(size[1] - 10)
        d.ellipse(
            (x, y, x + rng.randrange(5, 20), y + rng.randrange(5, 20)), fill=tuple(rng.randrange(256) for _ in range(3))
        )
    img.save(path)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        _shapes(root / f"img{i}.png", i)
    _shapes(root / "sub" / "nested.jpg", 99)
    return root


@pytest.fixture
def sketch_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sketches"
    root.mkdir()
    for i in range(4):
        img = Image.new("L", (40, 40), 255)
        d = ImageDraw.Draw(img)
        d.line((0, i * 5, 40, 40 - i * 5), fill=0, width=2)
        d.ellipse((10, 10, 30, 30), outline=0, width=1 + i)
        img.save(root / f"s{i}.png")
    return root


@pytest.fixture
def tiny_tom() -> TOMConfig:
    torch.manual_seed(0)
    return TOMConfig(
        size=32,
        g_width=8,
        g_max_width=16,
        d_forms=8,
        d_hidden=16,
        batch_size=2,
        steps=4,
        warmup=2,
        snapshot_every=1,
        snapshots=3,
        sample_every=2,
        checkpoint_every=2,
        log_every=1,
    )


def _make_manifest(tmp_path: Path, image_dir: Path, n_sk: int = 2) -> Path:
    """A `tom sketch`-style manifest: every image with n_sk line drawings, different per image and sketch."""
    from PIL import Image, ImageDraw

    from sketch2image.data.images import ImageFolder

    folder = ImageFolder(image_dir, 32, progress=False)
    items = []
    for i, sid in enumerate(folder.ids):
        rel = []
        for k in range(n_sk):
            p = tmp_path / "sk" / f"s{k}" / f"{sid}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("L", (32, 32), 255)
            d = ImageDraw.Draw(img)
            d.ellipse((4 + i, 4 + k, 26 - k, 28 - i), outline=0, width=1 + k % 2)
            d.line((0, 3 * i + 2 * k, 31, 31 - 3 * i), fill=0, width=2)
            img.save(p)
            rel.append(p.relative_to(tmp_path / "sk").as_posix())
        items.append({"id": sid, "image": folder.paths[i].relative_to(image_dir).as_posix(), "sketches": rel})
    path = tmp_path / "sk" / "manifest.json"
    path.write_text(json.dumps({"format": "sketch2image.sketches/1", "images_root": str(image_dir), "items": items}))
    return path


@pytest.fixture
def paired_manifest(tmp_path: Path, image_dir: Path) -> Path:
    return _make_manifest(tmp_path, image_dir)


@pytest.fixture
def model_dir(tmp_path, image_dir, sketch_dir, tiny_tom):
    torch.manual_seed(0)
    ae = SketchAutoEncoder(AEConfig(size=32, width=8, max_width=32, style_dim=16, content_res=8).model_config())
    for m in ae.modules():  # an auto-encoder whose output depends on the style (at init it barely does)
        if isinstance(m, StyleInjection):
            torch.nn.init.normal_(m.proj.weight, std=2.0)
    ae.save_pretrained(tmp_path / "ae_run" / "model")
    ref = Refiner(GANConfig(width=8, max_width=16, levels=2).model_config(32, style_dim=16))
    torch.nn.init.normal_(ref.to_rgb.weight, std=0.1)  # a refiner that is not the identity any more
    for inj in ref.style:
        torch.nn.init.normal_(inj.proj.weight)
    ref.save_pretrained(tmp_path / "gan_run" / "model")
    train_tom(tiny_tom, image_dir, sketch_dir, tmp_path / "tom_run", progress=False)
    model = Sketch2Image.from_runs(tmp_path / "ae_run", tmp_path / "gan_run", tmp_path / "tom_run")
    return model.save_pretrained(tmp_path / "model", training_data="tiny shapes")
