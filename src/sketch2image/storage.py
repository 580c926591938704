"""Everything that reads or writes files, in one place: formats, atomic writes, configs, folder kinds.

- **Formats.** Every file sketch2image writes carries one of the format tags below (in the
  safetensors header or a ``"format"`` JSON key), and every reader checks it.
- **Atomic writes.** A file or folder is written under a temporary name beside its destination and
  renamed into place, so an interrupted job leaves the previous version or nothing, never half.
- **Weights** are safetensors (nothing is pickled); weights holding NaN/inf are never written.
- **Configs** are JSON of a dataclass, read back with every key and type checked.
- **Folder kinds.** What a folder is (an exported model, one part's folder, a training run) is
  decided here only (``folder_kind``, ``part_dir``), and ``Pretrained`` gives a network its
  ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sketch2image.errors import CheckpointError, S2IError

T = TypeVar("T")

# --- format tags: one name for each kind of file ----------------------------------------------------
AE_FORMAT = "sketch2image.autoencoder/2"  # config.json holds the network's settings only
AE_FORMATS_READ = (AE_FORMAT, "sketch2image.autoencoder/1")  # /1: config.json is the whole AEConfig
REFINER_FORMAT = "sketch2image.refiner/2"  # style_dim in config.json
REFINER_FORMATS_READ = (REFINER_FORMAT, "sketch2image.refiner/1")  # /1: GANConfig + style_dim in the header
TOM_SNAPSHOT_FORMAT = "sketch2image.tom_snapshot/1"
PIPELINE_FORMAT = "sketch2image.model/1"  # sketch2image.json of an exported model
SKETCH_MANIFEST_FORMAT = "sketch2image.sketches/1"
CHECKPOINT_FORMAT = "sketch2image.checkpoint/1"
EVAL_REPORT_FORMAT = "sketch2image.eval/1"
OPENMOJI_FORMAT = "sketch2image.openmoji/1"  # a rendered OpenMoji data folder's record
VGG_SUBSET_FORMAT = "sketch2image.vgg_subset/1"  # `s2i weights vgg --upto`: VGG layers for small machines
RUN_FORMAT = "sketch2image.run/1"  # run.json: what a training run was trained on (older runs: no tag)

# --- file names: distinct formats, distinct names -----------------------------------------------------
PIPELINE_FILE = "sketch2image.json"  # an exported model's description
SKETCH_MANIFEST_FILE = "manifest.json"  # `s2i tom sketch`: every image and its K sketches
OPENMOJI_FILE = "openmoji.json"  # `s2i data openmoji`: the render's parameters, ids and split
OPENMOJI_FILE_BEFORE = "manifest.json"  # its name before 0.2: still read, so old renders are reused
RUN_FILE = "run.json"  # a training run's inputs
# The file that marks each part's folder.
PART_FILES = {"ae": "model.safetensors", "refiner": "refiner.safetensors", "tom": "snapshots"}
PART_NAMES = {"ae": "auto-encoder", "refiner": "refiner", "tom": "TOM sketcher"}


# --- atomic writes -----------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the format); rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (``replace=False``: it
    must not exist), on failure it is removed."""
    path = Path(path)
    if path.exists() and not replace:
        raise CheckpointError(f"{path}: already exists; choose a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_image(image, path: str | os.PathLike) -> None:
    """A PIL image written atomically (format from the suffix)."""
    with atomic_file(path) as tmp:
        image.save(tmp)


def read_json(path: str | os.PathLike, what: str, error: type[S2IError] = CheckpointError) -> Any:
    """A JSON file, or an ``error`` naming the file and ``what`` it should have been."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise error(f"{path}: {what} missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: unreadable {what} ({e})") from e


def read_document(
    path: str | os.PathLike,
    formats: tuple[str | None, ...],
    what: str,
    *,
    keys: tuple[str, ...] = (),
    error: type[S2IError] = CheckpointError,
) -> dict[str, Any]:
    """A JSON document sketch2image wrote, checked: readable, an object, tagged with one of ``formats``
    (None: an untagged file from before tags) and holding ``keys``; else one ``error`` line naming it."""
    data = read_json(path, what, error)
    found = data.get("format") if isinstance(data, dict) else None
    if not isinstance(data, dict) or found not in formats or any(k not in data for k in keys):
        tags = ", ".join(f for f in formats if f)
        raise error(f"{path}: not a valid {what} (format {found!r}; this version reads {tags})")
    return data


def write_run_info(run_dir: str | os.PathLike, stage: str, **inputs: Any) -> None:
    """``run.json``: which stage a run folder is and what it was trained on (files as absolute paths)."""
    inputs = {k: str(Path(v).resolve()) if isinstance(v, Path) else v for k, v in inputs.items()}
    atomic_write_json(Path(run_dir) / RUN_FILE, {"format": RUN_FORMAT, "stage": stage, **inputs})


def read_run_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run.json`` of the training run ``path`` is (or whose ``model/`` it is); None outside a run."""
    run = run_of(path)
    return None if run is None else read_document(run / RUN_FILE, (RUN_FORMAT, None), "training run description")


# --- weights -----------------------------------------------------------------------------------------
def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor] | None:
    """The first floating-point tensor holding NaN/inf, as (name, tensor), or None."""
    for name, t in tensors:
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name, t
    return None


def refuse_non_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Weights holding NaN/inf are never written: a diverged run must not leave a loadable model behind."""
    bad = first_non_finite(tensors.items())
    if bad is not None:
        raise CheckpointError(f"refusing to write {path}: '{bad[0]}' holds non-finite values (the run diverged)")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None):
    """Tensors as a safetensors file, written atomically; refuses NaN/inf."""
    refuse_non_finite(tensors, Path(path))
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def tensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file, without reading the tensors."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def check_format(
    path: Path, found: str | None, accepted: tuple[str, ...], what: str, error: type[S2IError] = CheckpointError
) -> str:
    """The format tag of a safetensors header (``found``), checked to be one this version reads."""
    if found not in accepted:
        raise error(f"{path}: not a sketch2image {what} (format {found!r}; this version reads {accepted})")
    return found


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], source: str, what: str = "weights") -> None:
    """``module.load_state_dict(tensors, strict=True)`` with an error naming the file; NaN/inf refused."""
    bad = first_non_finite(tensors.items())
    if bad is not None:
        raise CheckpointError(f"{source}: '{bad[0]}' holds NaN/inf values: these weights are from a diverged run")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{source}: {what} do not fit this model ({first})") from e


# --- configs -----------------------------------------------------------------------------------------
class Checked:
    """Base of every config dataclass: checked where it is made (``__post_init__``: the constructor,
    ``dataclasses.replace``, ``from_dict``), so nothing downstream checks it again. Each layer of a
    config (network, run, stage) adds its own ``problems``, calling ``super().problems()`` first."""

    KIND: ClassVar[str] = "config"

    def problems(self) -> list[str]:
        return []

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise S2IError(f"invalid {self.KIND}: " + "; ".join(problems))

    def __post_init__(self) -> None:
        self.validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a dict, rejecting unknown keys, wrongly typed values and (``Checked``) invalid ones,
    each with an error naming ``source``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: a config must be a JSON object")
    names = {f.name: f for f in dataclasses.fields(cls)}
    # Keys added later keep old files' meaning; a layer's legacy defaults hold for every config built on it.
    legacy = {k: v for c in reversed(cls.__mro__) for k, v in vars(c).get("LEGACY_DEFAULTS", {}).items()}
    data = {**legacy, **data}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CheckpointError(f"{source}: unknown {cls.__name__} keys {unknown} (written by another version?)")
    hints = typing.get_type_hints(cls)
    for key, val in data.items():
        want = typing.get_origin(hints[key]) or hints[key]
        ok = isinstance(val, want) or (want is float and isinstance(val, int) and not isinstance(val, bool))
        if not ok or (want is int and isinstance(val, bool)):
            raise CheckpointError(f"{source}: {key}={val!r} should be {getattr(want, '__name__', want)}")
    try:
        return cls(**data)
    except CheckpointError:
        raise
    except S2IError as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    return from_dict(cls, read_json(path, "config file"), str(path))


def known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls`` (a training config read as a network's config)."""
    if not isinstance(data, dict):
        return data  # from_dict then says what is wrong with it
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# --- folder kinds ------------------------------------------------------------------------------------
def folder_kind(path: str | os.PathLike) -> str:
    """``model`` (exported by ``s2i export``), ``ae`` / ``refiner`` / ``tom`` (a part's own folder, or a
    training run whose ``model/`` holds one), or ``unknown``."""
    p = Path(path)
    if (p / PIPELINE_FILE).is_file():
        return "model"
    for part, marker in PART_FILES.items():
        if any((d / marker).exists() for d in (p, p / "model")):
            return part
    return "unknown"


def part_dir(path: str | os.PathLike, part: str) -> Path:
    """The folder holding ``part`` (ae | refiner | tom): ``path`` itself, the ``model/`` of a training run,
    or the ``<part>/`` of an exported model."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: folder not found")
    for d in (p, p / "model", p / part):
        if (d / PART_FILES[part]).exists():
            return d
    raise CheckpointError(
        f"{p}: no {PART_NAMES[part]} here (looked for {PART_FILES[part]} in it, in model/ of a training run "
        f"and in {part}/ of an exported model)"
    )


def run_of(path: str | os.PathLike) -> Path | None:
    """The training run folder that ``path`` is (or whose ``model/`` it is): the folder holding ``run.json``."""
    p = Path(path)
    for d in (p, p.parent if p.name == "model" else None):
        if d is not None and (d / RUN_FILE).is_file():
            return d
    return None


class Pretrained:
    """``save_pretrained``/``from_pretrained`` for a network built from one config dataclass (``self.cfg``).

    A folder holds ``config.json`` (the config) and the weights with the class's format tag in their
    header. Formats listed in ``FORMATS_READ`` besides ``FORMAT`` are older ones that still load
    (``config_from_file`` translates them).
    """

    PART: ClassVar[str]
    FORMAT: ClassVar[str]
    FORMATS_READ: ClassVar[tuple[str, ...]]
    CONFIG: ClassVar[type]
    cfg: Any

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        save_tensors(self.state_dict(), directory / PART_FILES[self.PART], {"format": self.FORMAT})  # type: ignore[attr-defined]
        atomic_write_json(directory / "config.json", to_dict(self.cfg))
        return directory

    @classmethod
    def config_from_file(cls, data: dict, fmt: str, header: dict[str, str], source: str) -> Any:
        return from_dict(cls.CONFIG, data, source)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu"):
        """From the part's folder, a training run folder, or an exported model folder; in eval mode."""
        directory = part_dir(path, cls.PART)
        weights = directory / PART_FILES[cls.PART]
        header = tensors_metadata(weights)
        fmt = check_format(weights, header.get("format"), cls.FORMATS_READ, PART_NAMES[cls.PART])
        config = directory / "config.json"
        model = cls(cls.config_from_file(read_json(config, "config file"), fmt, header, str(config)))
        load_weights(model, load_tensors(weights), str(weights), f"{PART_NAMES[cls.PART]} weights")  # type: ignore[arg-type]
        return model.to(device).eval()  # type: ignore[attr-defined]
