"""Render TOM sketches with every saved snapshot: the paired dataset for the later stages.

Each image gets one sketch per snapshot, written as ``sNN/<id>.png``, and a manifest pairs
every sketch with its image by the image's stable id (its path relative to the image
folder), never by list position.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sketch2image import parallel
from sketch2image.configs import TOMConfig
from sketch2image.data.images import ImageFolder, load_uint8
from sketch2image.data.ink import THRESHOLDS, InkReport, ink_fraction
from sketch2image.errors import CheckpointError, InputError, S2IError
from sketch2image.nets.tom import SketchGenerator, binarize
from sketch2image.nets.vgg import VGGEncoder, load_vgg
from sketch2image.storage import (
    SKETCH_MANIFEST_FILE,
    SKETCH_MANIFEST_FORMAT,
    TOM_SNAPSHOT_FORMAT,
    atomic_write_json,
    check_format,
    from_dict,
    load_config,
    load_tensors,
    load_weights,
    part_dir,
    save_tensors,
    tensors_metadata,
    to_dict,
)

log = logging.getLogger("sketch2image")
SNAPSHOT_DIR = "snapshots"


def save_snapshot(folder: Path, index: int, step: int, g: torch.nn.Module, cfg: TOMConfig, variant: str) -> Path:
    """One generator snapshot, ``snapshots/snapshot_XX.safetensors``, with its config in the header."""
    meta = {
        "format": TOM_SNAPSHOT_FORMAT,
        "index": str(index),
        "step": str(step),
        "variant": variant,
        "config": json.dumps(to_dict(cfg)),
    }
    path = Path(folder) / SNAPSHOT_DIR / f"snapshot_{index:02d}.safetensors"
    save_tensors(g.state_dict(), path, metadata=meta)
    return path


class TOMSketcher(torch.nn.Module):
    """The K snapshot generators of a TOM run sharing one VGG encoder."""

    def __init__(
        self,
        cfg: TOMConfig,
        generators: list[SketchGenerator],
        names: list[str],
        vgg: VGGEncoder,
        snapshot_info: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.names = cfg, names
        self.generators = torch.nn.ModuleList(generators)
        self.vgg = vgg
        # Per snapshot: the training step it was taken at and the stroke variant it was pulled towards.
        self.snapshot_info = snapshot_info or [{"step": "0", "variant": ""} for _ in generators]
        self.eval().requires_grad_(False)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``snapshots/``: what ``from_pretrained`` reads (the VGG is named by the config)."""
        directory = Path(directory)
        for i, (g, info) in enumerate(zip(self.generators, self.snapshot_info, strict=True)):
            save_snapshot(directory, i, int(info["step"]), g, self.cfg, info["variant"])
        atomic_write_json(directory / "config.json", to_dict(self.cfg))
        return directory

    @classmethod
    def from_pretrained(
        cls, path: str | Path, vgg: VGGEncoder | None = None, device: str | torch.device = "cpu"
    ) -> TOMSketcher:
        """From a TOM run folder, a saved sketcher, or the ``tom/`` of an exported model."""
        path = Path(path)
        if path.is_dir() and (path / "config.json").is_file() and not (path / SNAPSHOT_DIR).exists():
            cfg = load_config(TOMConfig, path / "config.json")
            raise CheckpointError(
                f"{path}: holds no generator snapshots yet (training stopped before its "
                f"warm-up of {cfg.warmup} steps?); continue it with `s2i tom train --resume`"
            )
        folder = part_dir(path, "tom")
        cfg = load_config(TOMConfig, folder / "config.json")
        files = sorted((folder / SNAPSHOT_DIR).glob("snapshot_*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder / SNAPSHOT_DIR}: no snapshot_*.safetensors files")
        gens, info = [], []
        for f in files:
            meta = tensors_metadata(f)
            check_format(f, meta.get("format"), (TOM_SNAPSHOT_FORMAT,), "TOM snapshot")
            try:
                snap_data = json.loads(meta["config"])
            except (KeyError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{f}: the snapshot's config is missing or unreadable ({e!r})") from e
            snap_cfg = from_dict(TOMConfig, snap_data, str(f))
            g = SketchGenerator(snap_cfg.feature_layer, snap_cfg.g_width, snap_cfg.g_max_width)
            load_weights(g, load_tensors(f), str(f), "snapshot weights")
            gens.append(g)
            info.append({"step": meta.get("step", "0"), "variant": meta.get("variant", "")})
        vgg = vgg if vgg is not None else load_vgg(cfg.vgg)
        return cls(cfg, gens, [f.stem for f in files], vgg, info).to(device)

    @torch.inference_mode()
    def forward(
        self, images: torch.Tensor, threshold: float | None = None, snapshot: int | None = None
    ) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → sketches (B, K, H, W), or (B, 1, H, W) from one ``snapshot`` only (the
        metrics use one: running all K would cost K times as much); H and W multiples of 16 keep sizes exact."""
        feats = self.vgg(images, [self.cfg.feature_layer])[self.cfg.feature_layer]
        generators = self.generators if snapshot is None else [self.generators[snapshot]]
        out = torch.cat([g(feats) for g in generators], 1)
        out = out[..., : images.shape[-2], : images.shape[-1]]
        return binarize(out, threshold) if threshold is not None else out


def _check_ink(reports: dict[str, InkReport], run_dir: Path, what: str) -> None:
    bad = {name: r for name, r in reports.items() if r.failed}
    if bad:
        listed = "; ".join(f"{name}: {r.problem()}" for name, r in bad.items())
        raise S2IError(
            f"{run_dir}: {len(bad)} of {len(reports)} TOM snapshots draw unusable sketches on {what} ({listed}). "
            f"The run diverged or is undertrained: look at {Path(run_dir) / 'samples'}, retrain or continue it "
            "(thresholds: docs/training.md, 'Sketch checks')"
        )


def _ink_reports(names: list[str], ink: list[torch.Tensor], finite: list[torch.Tensor]) -> dict[str, InkReport]:
    ink_t, finite_t = torch.cat(ink), torch.cat(finite)  # (N, K)
    return {name: InkReport.of(ink_t[:, j], ~finite_t[:, j]) for j, name in enumerate(names)}


def _draw(sketcher: TOMSketcher, images: torch.Tensor, threshold: float | None):
    """Sketches (B, K, H, W), their ink (B, K) and whether each is finite (B, K)."""
    raw = sketcher(images)
    finite = torch.isfinite(raw).flatten(2).all(2)
    sketches = binarize(raw, threshold) if threshold is not None else raw
    ink = ink_fraction(sketches.flatten(0, 1)).view(finite.shape)
    return sketches, ink.cpu(), finite.cpu()


PROBE_IMAGES = 32


class _Images(torch.utils.data.Dataset):
    """An image folder's files decoded on demand; an unreadable file comes back as its reason, not raised."""

    def __init__(self, folder: ImageFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"index": i, "image": load_uint8(self.folder.paths[i], self.folder.size)}
        except InputError as e:
            return {"index": i, "error": str(e)}


def _collate(items: list[dict]) -> dict:
    good = [it for it in items if "image" in it]
    return {
        "index": [it["index"] for it in good],
        "image": torch.stack([it["image"] for it in good]) if good else None,
        "errors": [(it["index"], it["error"]) for it in items if "error" in it],
    }


def sketch_folder(
    run_dir: Path,
    images: Path,
    out_dir: Path,
    *,
    size: int | None = None,
    batch_size: int = 8,
    threshold: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    ink_check: bool = True,
    num_workers: int = 0,
) -> Path:
    """Sketch every image of a folder with all snapshots; returns the manifest path.

    Before anything is written, every snapshot sketches a spread of up to ``PROBE_IMAGES`` images;
    a snapshot drawing mostly blank or solid sketches (``data/ink.py``) stops the job there. The
    ink of every snapshot over the whole folder is printed and recorded in the manifest, and
    checked again before the manifest is written. ``ink_check=False`` only reports.

    Scale: images are decoded by ``num_workers`` DataLoader processes, PNGs are written by a thread
    pool while the next batch is drawn, and under torchrun / ``accelerate launch`` every process
    sketches its share of the batches; the main process then writes the one manifest. An unreadable
    image is reported, listed in the manifest's ``skipped`` and left out.
    """
    from concurrent.futures import ThreadPoolExecutor

    world, rank = parallel.world()
    sketcher = TOMSketcher.from_pretrained(run_dir, device=device)
    size = size or sketcher.cfg.size
    dataset = ImageFolder(images, size, verify=False, progress=progress and rank == 0)  # a listing, no decoding
    out_dir = Path(out_dir)
    k = len(sketcher.names)
    spread = torch.linspace(0, len(dataset) - 1, min(PROBE_IMAGES, len(dataset))).long().unique().tolist()
    probe = [b["image"] for b in (_collate([_Images(dataset)[i]]) for i in spread) if b["image"] is not None]
    if probe and ink_check:
        probe_t = torch.cat(probe).float().div_(255).to(device)
        _, ink, finite = zip(*(_draw(sketcher, chunk, threshold) for chunk in probe_t.split(batch_size)), strict=True)
        _check_ink(_ink_reports(sketcher.names, list(ink), list(finite)), run_dir, f"{len(probe)} probe images")

    chunks = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    loader = DataLoader(_Images(dataset), batch_sampler=chunks[rank::world], num_workers=num_workers,
                        collate_fn=_collate, pin_memory=torch.device(device).type == "cuda",
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    rows, errors, written = [], [], []  # rows: (index, ink (K,), finite (K,))
    with ThreadPoolExecutor(4) as pool:
        pending = []
        for batch in tqdm(loader, desc=f"sketching x{k}", disable=not progress or rank != 0):
            errors += batch["errors"]
            if batch["image"] is None:
                continue
            sketches, ink, finite = _draw(sketcher, batch["image"].to(device).float().div_(255), threshold)
            pixels = (sketches.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            for n, i in enumerate(batch["index"]):
                rows.append((i, ink[n], finite[n]))
                for j in range(k):
                    path = out_dir / f"s{j:02d}" / f"{dataset.ids[i]}.png"
                    pending.append(pool.submit(_write_png, pixels[n, j].numpy(), path))
                    written.append(path)
            if len(pending) > 64 * k:  # bounded: the writers keep up, or the loop waits for them
                for f in pending:
                    f.result()
                pending = []
        for f in pending:
            f.result()
    if world > 1:
        rows, errors, written = (sum(parallel.gather(x, world), []) for x in (rows, errors, written))
    if rank != 0:
        return out_dir / SKETCH_MANIFEST_FILE
    for _, why in errors:
        log.warning("skipping %s", why)
    rows.sort(key=lambda r: r[0])
    if not rows:
        raise InputError(f"{images}: none of the {len(dataset)} image files could be read")
    inks, finites = [torch.stack([r[1] for r in rows])], [torch.stack([r[2] for r in rows])]
    reports = _ink_reports(sketcher.names, inks, finites)
    for name, r in reports.items():
        log.info("%s: %s over %d images", name, r, r.n)
    try:
        if ink_check:
            _check_ink(reports, run_dir, f"the {len(rows)} images of {images}")
    except S2IError:
        for p in written:  # no half-usable output: the sketches go, no manifest is written
            Path(p).unlink(missing_ok=True)
        raise
    items = [{"id": dataset.ids[i], "image": dataset.paths[i].relative_to(dataset.root).as_posix(),
              "sketches": [f"s{j:02d}/{dataset.ids[i]}.png" for j in range(k)]} for i, _, _ in rows]  # fmt: skip
    root = Path(dataset.root).resolve()
    manifest = {
        "format": SKETCH_MANIFEST_FORMAT,
        "tom_run": str(Path(run_dir).resolve()),
        # Relative to the manifest's folder, so that a data folder can be moved or mounted elsewhere; the
        # absolute path is the fallback when only the sketches moved.
        "images_root": os.path.relpath(root, out_dir.resolve()),
        "images_root_absolute": str(root),
        "size": size,
        "snapshots": sketcher.names,
        "threshold": threshold,
        "ink": {name: r.as_dict() for name, r in reports.items()},
        "ink_thresholds": THRESHOLDS,
        "skipped": [str(dataset.paths[i]) for i, _ in sorted(errors)],
        "items": items,
    }
    path = out_dir / SKETCH_MANIFEST_FILE
    atomic_write_json(path, manifest)
    return path


def _write_png(pixels, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)
