"""One config dataclass per stage, with every default in one place.

Configs are saved as JSON beside the weights; loading one checks its keys and values so a run
folder from another version, or a typo in an override, fails with a message instead of a
silently different model.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sketch2image.errors import CheckpointError, S2IError
from sketch2image.nets.vgg import LAYER_NAMES

T = TypeVar("T")


@dataclass
class TOMConfig:
    """Stage 1: sketch synthesis (paper §3). Defaults are the 128 px CPU-friendly preset."""

    size: int = 128
    feature_layer: str = "relu3_1"  # G reads this VGG layer; the AdaIN feature target lives here too
    gram_layers: list[str] = field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1"])
    g_width: int = 32
    g_max_width: int = 256
    d_forms: int = 128
    d_hidden: int = 256
    vgg: str = "normalised"  # "normalised", "torchvision" or a weight-file path
    gan_loss: str = "bce"  # "bce" (paper Eq. 5) or "hinge"
    w_adv: float = 1.0
    w_feat: float = 1.0
    w_gram: float = 0.0  # optional Gram matching to the re-matched real sketches
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 8
    steps: int = 520
    # Multiple transfers: K generator snapshots, every `snapshot_every` steps after `warmup`.
    snapshots: int = 10
    warmup: int = 200
    snapshot_every: int = 35
    # Variation between snapshots: before each snapshot the real-sketch targets come from one
    # random subset (this fraction of S) of one stroke-weight variant of S. 1.0 and
    # stroke_variants=False give the paper's plain schedule.
    snapshot_focus: float = 0.35
    stroke_variants: bool = True
    hflip: bool = True
    seed: int = 0
    sample_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 0
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (Accelerate)

    def validate(self) -> None:
        problems = []
        if self.feature_layer not in LAYER_NAMES:
            problems.append(f"feature_layer {self.feature_layer!r} not in {LAYER_NAMES}")
        problems += [f"gram layer {g!r} not in {LAYER_NAMES}" for g in self.gram_layers if g not in LAYER_NAMES]
        if self.size < 16 or self.size % 16:
            problems.append(f"size {self.size} must be a multiple of 16 and >= 16")
        if self.gan_loss not in ("bce", "hinge"):
            problems.append(f"gan_loss {self.gan_loss!r} must be 'bce' or 'hinge'")
        if not 0.0 < self.snapshot_focus <= 1.0:
            problems.append(f"snapshot_focus {self.snapshot_focus} must be in (0, 1]")
        if self.snapshots < 1 or self.snapshot_every < 1 or self.batch_size < 1:
            problems.append("snapshots, snapshot_every and batch_size must be >= 1")
        last = self.warmup + (self.snapshots - 1) * self.snapshot_every
        if last > self.steps:
            problems.append(
                f"the last snapshot falls at step {last} > steps {self.steps}: "
                "raise steps or lower warmup/snapshot_every/snapshots"
            )
        if problems:
            raise S2IError("invalid TOM config: " + "; ".join(problems))

    def snapshot_steps(self) -> list[int]:
        return [self.warmup + i * self.snapshot_every for i in range(self.snapshots)]


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a dict, rejecting unknown keys and wrongly typed values."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"{source}: unknown {cls.__name__} keys {unknown} (written by another version?)")
    hints = typing.get_type_hints(cls)
    for key, val in data.items():
        want = typing.get_origin(hints[key]) or hints[key]
        ok = isinstance(val, want) or (want is float and isinstance(val, int) and not isinstance(val, bool))
        if not ok or (want is int and isinstance(val, bool)):
            raise CheckpointError(f"{source}: {key}={val!r} should be {getattr(want, '__name__', want)}")
    cfg = cls(**data)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def load_config(cls: type[T], path: Path) -> T:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: config file missing") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    return from_dict(cls, data, str(path))


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """``key=value`` strings from the command line, parsed as JSON where possible."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise S2IError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        if key not in data:
            raise S2IError(f"unknown option {key!r}; known: {', '.join(sorted(data))}")
        if isinstance(data[key], list) and isinstance(val, str):
            val = [v.strip() for v in val.split(",") if v.strip()]
        data[key] = val
    try:
        return from_dict(type(cfg), data, "command line")
    except CheckpointError as e:
        raise S2IError(str(e)) from e
