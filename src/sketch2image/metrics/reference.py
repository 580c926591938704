"""Inception features of the real images, cached on disk by the sha256 of their pixels, the image
size and the extractor's own checksum, never by a name."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sketch2image.storage import load_tensors, save_tensors, tensors_metadata


def _default_cache_dir() -> Path:
    env = os.environ.get("S2I_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sketch2image"


def _features(ctx, images: torch.Tensor, batch_size: int, desc: str, progress: bool) -> torch.Tensor:
    rows = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        rows.append(ctx.inception(images[i : i + batch_size].to(ctx.device)).cpu())
    return torch.cat(rows)


def reference_features(
    ctx, images: torch.Tensor, batch_size: int, cache_dir: Path | None, progress: bool
) -> tuple[torch.Tensor, bool]:
    """Inception features of the real images, cached by content hash. Returns (features, from cache)."""
    from sketch2image.metrics.inception import PREPROCESS

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(pixels.shape), "extractor": ctx.inception.sha256, "prep": PREPROCESS}).encode())
    h.update(pixels.numpy().tobytes())
    key = h.hexdigest()
    file = (cache_dir or _default_cache_dir()) / "fid_reference" / f"{key}.safetensors"
    if file.is_file():
        try:
            if tensors_metadata(file).get("key") == key:
                return load_tensors(file)["features"], True
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            pass
    feats = _features(ctx, images, batch_size, "Inception (reference)", progress)
    try:
        save_tensors({"features": feats.contiguous()}, file, {"key": key, "n": str(len(feats))})
    except OSError:
        pass  # a read-only cache only costs time
    return feats, False
