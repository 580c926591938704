"""Image-loading layer: every odd file format a user folder may hold, and broken files."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sketch2image.data import images
from sketch2image.data.images import ImageFolder, open_rgb, resize_square, scan_images, to_tensor
from sketch2image.errors import InputError


def _save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _solid(path, color=(10, 200, 30), size=(40, 30)):
    return _save(Image.new("RGB", size, color), path)


def _px(img: Image.Image, xy=(0, 0)):
    return img.getpixel(xy)


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[..., 0] = 255  # red everywhere
    arr[:, :10, 3] = 0  # left half fully transparent
    arr[:, 10:, 3] = 128  # right half ~50% opaque
    path = _save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png")
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 20)
    assert _px(img, (2, 5)) == (255, 255, 255)
    r, g, b = _px(img, (15, 5))
    expected = round(255 * (1 - 128 / 255))  # white showing through
    assert r == 255 and abs(g - expected) <= 2 and abs(b - expected) <= 2


def test_la_and_palette_transparency(tmp_path):
    la = Image.new("LA", (8, 8), (0, 0))
    assert _px(open_rgb(_save(la, tmp_path / "la.png"))) == (255, 255, 255)

    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)  # 0 = blue, 1 = red
    pal.putpixel((0, 0), 0)
    path = _save(pal, tmp_path / "p.png", transparency=1)  # red entry transparent
    img = open_rgb(path)
    assert _px(img, (0, 0)) == (0, 0, 255)
    assert _px(img, (3, 3)) == (255, 255, 255)


def test_grayscale_and_bilevel(tmp_path):
    img = open_rgb(_save(Image.new("L", (6, 4), 77), tmp_path / "g.png"))
    assert img.mode == "RGB" and _px(img) == (77, 77, 77)
    img = open_rgb(_save(Image.new("1", (6, 4), 1), tmp_path / "b.bmp"))
    assert _px(img) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    # Pure cyan + yellow ink = green.
    path = _save(Image.new("CMYK", (16, 16), (255, 0, 255, 0)), tmp_path / "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    r, g, b = _px(open_rgb(path), (8, 8))
    assert g > 200 and r < 60 and b < 60


def test_16bit_png_scaled_not_clipped(tmp_path):
    arr = np.array([[65535, 32768, 0, 257]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "deep.png")
    assert Image.open(path).mode in ("I;16", "I")  # PIL's own convert("RGB") would clip 32768 to 255
    img = open_rgb(path)
    assert [_px(img, (x, 0))[0] for x in range(4)] == [255, 128, 0, 1]


def test_32bit_int_and_float_modes():
    to_rgb = images.as_rgb  # these modes cannot be stored in our formats, so test the converter directly
    assert _px(to_rgb(Image.fromarray(np.array([[65535, 0]], np.int32), "I"))) == (255, 255, 255)
    assert _px(to_rgb(Image.fromarray(np.array([[200, 0]], np.int32), "I"))) == (200, 200, 200)
    for mode in ("RGBa", "La", "PA"):  # premultiplied / palette alpha, fully transparent -> white
        assert _px(to_rgb(Image.new(mode, (2, 2)))) == (255, 255, 255)
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([32768, 65535], ">u2").tobytes())
    assert [_px(to_rgb(big_endian), (x, 0)) for x in range(2)] == [(128,) * 3, (255,) * 3]
    assert _px(to_rgb(Image.fromarray(np.array([[0.5, 0]], np.float32), "F"))) == (128, 128, 128)
    assert _px(to_rgb(Image.fromarray(np.array([[100.0, 300.0]], np.float32), "F"))) == (100, 100, 100)
    assert _px(to_rgb(Image.fromarray(np.array([[100.0, 300.0]], np.float32), "F")), (1, 0)) == (255,) * 3


def test_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(Image.new("RGB", (40, 20), "red"), tmp_path / "rot.jpg", exif=exif)
    assert open_rgb(path).size == (20, 40)


def _jpeg_bytes(size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_broken_files_raise_input_error(tmp_path):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    data = _jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (tmp_path / "x.png").write_text("definitely not a picture")
    for name in ["cut.jpg", "cut.png", "x.png", "missing.jpg"]:
        with pytest.raises(InputError, match="cannot read image") as info:
            open_rgb(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError):  # draft decoding must not hide truncation either
        open_rgb(tmp_path / "cut.jpg", draft=8)


def test_pixel_limit(tmp_path, monkeypatch):
    path = _solid(tmp_path / "big.png", size=(50, 40))
    assert open_rgb(path).size == (50, 40)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(InputError, match="1,000") as info:
        open_rgb(path)
    assert "50x40" in str(info.value) and "big.png" in str(info.value)


def test_pil_decompression_bomb_becomes_input_error(tmp_path, monkeypatch):
    path = _solid(tmp_path / "bomb.png", size=(50, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns above this, errors above 2x
    with pytest.raises(InputError, match="too large"):
        open_rgb(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # warning only (2000 px < 2x limit)
    with pytest.raises(InputError, match="too large"):
        open_rgb(path)


def test_scan_errors_name_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty.*no image files.*\\.jpg"):
        scan_images(empty)
    with pytest.raises(InputError, match="nope.*does not exist"):
        scan_images(tmp_path / "nope")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "readme.txt").write_text("hi")
    (docs / ".hidden.png").write_bytes(b"")
    with pytest.raises(InputError, match="docs"):
        scan_images(docs)
    with pytest.raises(InputError, match="docs"):
        ImageFolder(docs, 8)
    with pytest.raises(InputError, match="not a folder"):
        scan_images(docs / "readme.txt")


def test_scan_recursive_sorted_hidden_and_ids(tmp_path):
    for rel in ["b.png", "cats/001.JPG", "cats/000.jpeg", "a/z/deep.webp", "dup.png", "dup.jpg", "c.bmp"]:
        _solid(tmp_path / rel, size=(12, 10))
    _solid(tmp_path / ".secret" / "x.png")
    _solid(tmp_path / "cats" / ".thumb.png")
    (tmp_path / "notes.txt").write_text("x")

    rels = [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)]
    assert rels == ["a/z/deep.webp", "b.png", "c.bmp", "cats/000.jpeg", "cats/001.JPG", "dup.jpg", "dup.png"]
    flat = [p.name for p in scan_images(tmp_path, recursive=False)]
    assert flat == ["b.png", "c.bmp", "dup.jpg", "dup.png"]

    ds = ImageFolder(tmp_path, 8, progress=False)
    assert ds.ids == ["a/z/deep", "b", "c", "cats/000", "cats/001", "dup.jpg", "dup.png"]
    assert len(set(ds.ids)) == len(ds) == 7 and ds.skipped == []
    assert ds.root == tmp_path and ds.paths[0] == tmp_path / "a" / "z" / "deep.webp"
    assert ImageFolder(tmp_path, 8, progress=False).ids == ds.ids  # deterministic


def test_imagefolder_skips_broken_files(tmp_path, caplog):
    for i in range(3):
        _solid(tmp_path / f"good{i}.png", color=(i * 50, 0, 0))
    data = _jpeg_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x00garbage" * 10)
    with caplog.at_level(logging.WARNING, logger="sketch2image"):
        ds = ImageFolder(tmp_path, 16, progress=False)
    assert len(ds) == 3 and ds.ids == ["good0", "good1", "good2"]
    assert sorted(p.name for p, _ in ds.skipped) == ["garbage.png", "trunc.jpg"]
    text = caplog.text
    assert "trunc.jpg" in text and "garbage.png" in text and "skipped 2 of 5 files" in text
    assert str(tmp_path) in text

    unverified = ImageFolder(tmp_path, 16, verify=False, progress=False)
    assert len(unverified) == 5 and unverified.skipped == []
    with pytest.raises(InputError, match="garbage.png"):
        unverified[0]


def test_imagefolder_all_broken(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(InputError, match="none of the 1"):
        ImageFolder(tmp_path, 8, progress=False)


def _tricolour() -> Image.Image:
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:60, 1] = 255
    arr[:, 60:, 2] = 255
    return Image.fromarray(arr, "RGB")


def test_resize_square_centre_crop():
    img = _tricolour()
    out = resize_square(img, 30)
    assert out.size == (30, 30)
    assert np.array_equal(np.asarray(out), np.asarray(img)[:, 30:60])  # exactly the green middle
    small = np.asarray(resize_square(img, 10)).astype(int)
    assert small.shape == (10, 10, 3)
    assert (small[:, 2:8, 1] > 240).all() and (small[:, 2:8, [0, 2]] < 15).all()
    tall = resize_square(img.transpose(Image.Transpose.ROTATE_90), 20)  # 30x90 portrait
    assert tall.size == (20, 20) and np.asarray(tall)[10, 10, 1] > 240


def test_getitem_tensor(tmp_path):
    _save(_tricolour(), tmp_path / "flag.png")
    ds = ImageFolder(tmp_path, 30, progress=False)
    item = ds[0]
    x = item["image"]
    assert item["id"] == "flag" and item["index"] == 0
    assert x.shape == (3, 30, 30) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(x[1], torch.ones(30, 30)) and x[0].max() == 0 and x[2].max() == 0
    assert ds[-1]["index"] == 0
    with pytest.raises(IndexError):
        ds[1]


def test_to_tensor_and_load_all(tmp_path):
    t = to_tensor(Image.new("RGB", (4, 2), (255, 0, 51)))
    assert t.shape == (3, 2, 4) and t.dtype == torch.float32
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    _solid(tmp_path / "a.png", color=(255, 0, 0), size=(20, 40))
    _solid(tmp_path / "b.jpg", color=(0, 0, 255), size=(64, 64))
    ds = ImageFolder(tmp_path, 16, progress=False)
    cache = ds.load_all()
    assert cache.shape == (2, 3, 16, 16) and cache.dtype == torch.uint8
    assert cache[0, 0].min() == 255 and cache[0, 2].max() == 0
    assert cache[1, 2].float().mean() > 240 and cache[1, 0].float().mean() < 15
    assert torch.equal(cache[1].float() / 255, ds[1]["image"])
