"""Render TOM sketches with every saved snapshot: the paired dataset for the later stages.

Each image gets one sketch per snapshot, written as ``sNN/<id>.png``, and a manifest pairs
every sketch with its image by the image's stable id (its path relative to the image
folder), never by list position.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sketch2image.configs import TOMConfig, from_dict, load_config
from sketch2image.data.images import ImageFolder
from sketch2image.data.ink import THRESHOLDS, InkReport, ink_fraction
from sketch2image.errors import CheckpointError, S2IError
from sketch2image.nets.tom import SketchGenerator, binarize
from sketch2image.nets.vgg import VGGEncoder, load_vgg
from sketch2image.train.checkpoint import (
    atomic_write_json,
    first_non_finite,
    load_module,
    load_safetensors,
    safetensors_metadata,
)

MANIFEST_FORMAT = "sketch2image.sketches/1"
log = logging.getLogger("sketch2image")


class TOMSketcher(torch.nn.Module):
    """The K snapshot generators of a TOM run sharing one VGG encoder."""

    def __init__(self, cfg: TOMConfig, generators: list[SketchGenerator], names: list[str], vgg: VGGEncoder) -> None:
        super().__init__()
        self.cfg, self.names = cfg, names
        self.generators = torch.nn.ModuleList(generators)
        self.vgg = vgg
        self.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, run_dir: str | Path, vgg: VGGEncoder | None = None, device: str | torch.device = "cpu"
    ) -> TOMSketcher:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir}: TOM run folder not found")
        cfg = load_config(TOMConfig, run_dir / "config.json")
        files = sorted((run_dir / "snapshots").glob("snapshot_*.safetensors"))
        if not files:
            raise CheckpointError(
                f"{run_dir}: holds no generator snapshots yet (training stopped before its "
                f"warm-up of {cfg.warmup} steps?); continue it with `s2i tom train --resume`"
            )
        gens = []
        for f in files:
            meta = safetensors_metadata(f)
            if meta.get("format") != "sketch2image.tom_snapshot/1":
                raise CheckpointError(f"{f}: not a sketch2image TOM snapshot (format {meta.get('format')!r})")
            snap_cfg = from_dict(TOMConfig, json.loads(meta["config"]), str(f))
            g = SketchGenerator(snap_cfg.feature_layer, snap_cfg.g_width, snap_cfg.g_max_width)
            tensors = load_safetensors(f)
            bad = first_non_finite(tensors.items())
            if bad is not None:
                raise CheckpointError(f"{f}: '{bad[0]}' holds NaN/inf values: this snapshot is from a diverged run")
            load_module("g", g, {f"g.{k}": v for k, v in tensors.items()}, str(f))
            gens.append(g)
        return cls(cfg, gens, [f.stem for f in files], vgg if vgg is not None else load_vgg(cfg.vgg)).to(device)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → sketches (B, K, H, W); H and W multiples of 16 keep sizes exact."""
        feats = self.vgg(images, [self.cfg.feature_layer])[self.cfg.feature_layer]
        out = torch.cat([g(feats) for g in self.generators], 1)
        out = out[..., : images.shape[-2], : images.shape[-1]]
        return binarize(out, threshold) if threshold is not None else out


def _save_png(t: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (t.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    Image.fromarray(arr, mode="L").save(path)


def _check_ink(reports: dict[str, InkReport], run_dir: Path, what: str) -> None:
    bad = {name: r for name, r in reports.items() if r.failed}
    if bad:
        listed = "; ".join(f"{name}: {r.problem()}" for name, r in bad.items())
        raise S2IError(
            f"{run_dir}: {len(bad)} of {len(reports)} TOM snapshots draw unusable sketches on {what} ({listed}). "
            f"The run diverged or is undertrained: look at {Path(run_dir) / 'samples'}, retrain or continue it "
            "(thresholds: README, 'Sketch checks')"
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
) -> Path:
    """Sketch every image of a folder with all snapshots; returns the manifest path.

    Before anything is written, every snapshot sketches a spread of up to ``PROBE_IMAGES`` images;
    a snapshot drawing mostly blank or solid sketches (``data/ink.py``) stops the job there. The
    ink of every snapshot over the whole folder is printed and recorded in the manifest, and
    checked again before the manifest is written. ``ink_check=False`` only reports.
    """
    sketcher = TOMSketcher.from_pretrained(run_dir, device=device)
    size = size or sketcher.cfg.size
    dataset = ImageFolder(images, size, progress=progress)
    out_dir = Path(out_dir)
    k = len(sketcher.names)
    spread = torch.linspace(0, len(dataset) - 1, min(PROBE_IMAGES, len(dataset))).long().unique().tolist()
    probe = torch.stack([dataset[i]["image"] for i in spread]).to(device)
    _, ink, finite = zip(*(_draw(sketcher, chunk, threshold) for chunk in probe.split(batch_size)), strict=True)
    if ink_check:
        _check_ink(_ink_reports(sketcher.names, list(ink), list(finite)), run_dir, f"{len(spread)} probe images")

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    items, inks, finites, written = [], [], [], []
    for batch in tqdm(loader, desc=f"sketching x{k}", disable=not progress):
        sketches, ink, finite = _draw(sketcher, batch["image"].to(device), threshold)
        inks.append(ink)
        finites.append(finite)
        for i, (sid, idx) in enumerate(zip(batch["id"], batch["index"].tolist(), strict=True)):
            rel = []
            for j in range(k):
                path = Path(f"s{j:02d}") / f"{sid}.png"
                _save_png(sketches[i, j], out_dir / path)
                written.append(out_dir / path)
                rel.append(path.as_posix())
            items.append({"id": sid, "image": dataset.paths[idx].relative_to(dataset.root).as_posix(), "sketches": rel})
    reports = _ink_reports(sketcher.names, inks, finites)
    for name, r in reports.items():
        log.info("%s: %s over %d images", name, r, r.n)
    try:
        if ink_check:
            _check_ink(reports, run_dir, f"the {len(dataset)} images of {images}")
    except S2IError:
        for p in written:  # no half-usable output: the sketches go, no manifest is written
            p.unlink(missing_ok=True)
        raise
    manifest = {
        "format": MANIFEST_FORMAT,
        "tom_run": str(Path(run_dir).resolve()),
        "images_root": str(Path(dataset.root).resolve()),
        "size": size,
        "snapshots": sketcher.names,
        "threshold": threshold,
        "ink": {name: r.as_dict() for name, r in reports.items()},
        "ink_thresholds": THRESHOLDS,
        "skipped": [str(p) for p, _ in dataset.skipped],
        "items": items,
    }
    path = out_dir / "manifest.json"
    atomic_write_json(path, manifest)
    return path
