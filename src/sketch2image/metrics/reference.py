"""Inception features of the real images, cached on disk by the sha256 of their pixels (image by
image, in order) and the extractor's own checksum, never by a name."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from sketch2image.storage import load_tensors, save_tensors, tensors_metadata


def _default_cache_dir() -> Path:
    env = os.environ.get("S2I_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sketch2image"


def reference_key(ctx, digests: list[str]) -> str:
    """The cache key of a reference set: its images' pixel digests, in order, and the extractor."""
    from sketch2image.metrics.inception import PREPROCESS

    h = hashlib.sha256()
    h.update(json.dumps({"n": len(digests), "extractor": ctx.inception.sha256, "prep": PREPROCESS}).encode())
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()


def _file(key: str, cache_dir: Path | None) -> Path:
    return (cache_dir or _default_cache_dir()) / "fid_reference" / f"{key}.safetensors"


def load_reference(key: str, cache_dir: Path | None) -> torch.Tensor | None:
    """Cached features for ``key``, or None (a damaged entry is recomputed, never trusted)."""
    file = _file(key, cache_dir)
    if file.is_file():
        try:
            if tensors_metadata(file).get("key") == key:
                return load_tensors(file)["features"]
        except Exception:  # noqa: BLE001
            pass
    return None


def store_reference(key: str, feats: torch.Tensor, cache_dir: Path | None) -> None:
    try:
        save_tensors({"features": feats.contiguous()}, _file(key, cache_dir), {"key": key, "n": str(len(feats))})
    except OSError:
        pass  # a read-only cache only costs time
