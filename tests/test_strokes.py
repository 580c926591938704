"""Real drawings in: stroke normalisation, folders that skip and go on, outputs in the sketch's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import car_drawing, sketch_png
from PIL import Image, ImageDraw

from sketch2image.cli import main
from sketch2image.data.strokes import BlankSketch, default_stroke_width, normalise_strokes, stroke_width
from sketch2image.errors import InputError
from sketch2image.pipeline import Sketch2Image
from sketch2image.processing import normalize_sketch, sketch_grey


def _half_ink() -> Image.Image:
    """A drawing that is mostly ink: a filled black square holding a white disc with a bar across it."""
    img = Image.new("L", (128, 128), 255)
    d = ImageDraw.Draw(img)
    d.rectangle((10, 10, 118, 118), fill=0)
    d.ellipse((40, 40, 88, 88), fill=255)
    d.line((50, 64, 78, 64), fill=0, width=3)
    return img


def _scan() -> Image.Image:
    """Dark strokes on uneven grey paper with sensor noise, as a scanner or a phone photo gives them."""
    rng = np.random.default_rng(0)
    base = np.asarray(car_drawing(256, 2, 70, paper=200), dtype=np.float32)
    shade = np.linspace(-25, 25, 256)[None, :]
    return Image.fromarray(np.clip(base + shade + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))


DRAWINGS = {
    "1px grey lines, 128 px": lambda: car_drawing(128, 1, 200),
    "1px grey lines, 512 px": lambda: car_drawing(512, 1, 170),
    "1px grey lines, 1024 px": lambda: car_drawing(1024, 1, 170),
    "3px brush, 512 px": lambda: car_drawing(512, 3, 0),
    "grey paper, darker strokes": lambda: car_drawing(256, 2, 60, paper=150),
    "scanned paper": _scan,
    "white-on-black chalk": lambda: Image.eval(car_drawing(256, 3, 0), lambda v: 255 - v),
    "more than half ink": _half_ink,
    "3:1 landscape": lambda: car_drawing(128, 2, 0, aspect=3.0),
}


@pytest.mark.parametrize("name", list(DRAWINGS))
def test_every_kind_of_drawing_becomes_training_like_lines(name):
    out, report = normalise_strokes(sketch_grey(DRAWINGS[name]()), 64, 1.6, "auto", name)
    assert out.shape == (1, 64, 64)
    ink = out[0] < 0.5
    assert out[0, 0, 0] > 0.99 and out[0, -1, -1] > 0.99  # white page
    assert 0.01 < ink.float().mean() < 0.5  # lines, neither a blank nor a solid page
    if name != "more than half ink":  # its filled square is drawn as a thick outline
        assert abs(stroke_width(ink) - 1.6) < 0.5, report  # the training line weight, whatever came in
    assert report.inverted == (name == "white-on-black chalk")


def test_line_weight_and_grey_level_do_not_change_the_drawing():
    thin = normalise_strokes(sketch_grey(car_drawing(1024, 1, 170)), 64, 1.6)[0][0] < 0.5
    brush = normalise_strokes(sketch_grey(car_drawing(512, 3, 0)), 64, 1.6)[0][0] < 0.5
    chalk = normalise_strokes(sketch_grey(Image.eval(car_drawing(256, 3, 0), lambda v: 255 - v)), 64, 1.6)[0][0] < 0.5
    near = lambda m: torch.nn.functional.max_pool2d(m.float()[None, None], 5, 1, 2)[0, 0] > 0.5  # noqa: E731
    for other in (brush, chalk):  # the same lines, up to 2 px (3 % of the side) of placement
        assert (thin & near(other)).sum() / thin.sum() > 0.9
        assert (other & near(thin)).sum() / other.sum() > 0.9


def test_more_than_half_ink_is_not_flipped():
    out = normalize_sketch(_half_ink(), 64)[0]
    # The old rule (image median) inverted this drawing; the page at the border says it is dark-on-white.
    assert out[32, 28:36].min() < 0.5  # the bar across the disc stays dark
    assert out[26, 32] > 0.9  # the disc stays white


@pytest.mark.parametrize("page", [255, 128, 0])
def test_empty_and_uniform_pages_are_still_refused(page):
    with pytest.raises(BlankSketch, match="the sketch is blank"):
        normalize_sketch(Image.new("L", (128, 128), page), 64)
    noisy = np.clip(page + np.random.default_rng(1).normal(0, 3, (128, 128)), 0, 255).astype(np.uint8)
    with pytest.raises(InputError, match="blank"):
        normalize_sketch(Image.fromarray(noisy), 64)  # scanner noise on an empty page is not a drawing


def test_stroke_none_is_the_drawing_as_given():
    with pytest.raises(InputError, match="no dark lines"):  # why 'auto' exists: faint lines read as blank
        normalize_sketch(car_drawing(128, 1, 200), 64, stroke="none")
    assert normalize_sketch(car_drawing(128, 2, 0), 64, stroke="none").shape == (1, 64, 64)
    with pytest.raises(ValueError, match="stroke mode"):
        normalise_strokes(np.ones((8, 8)), 16, 1.5, "bold")


def test_stroke_width_measure():
    mask = np.zeros((40, 40), bool)
    mask[10, 5:35] = True
    assert stroke_width(mask) == pytest.approx(1.0, abs=0.1)
    mask[10:13, 5:35] = True
    assert stroke_width(mask) == pytest.approx(3.0, abs=0.4)
    assert stroke_width(np.zeros((4, 4), bool)) == 0.0
    assert default_stroke_width(64) == pytest.approx(1.6)


# --- the model: outputs in the sketch's shape, stroke width recorded at export, errors="skip" ----------


def test_outputs_keep_the_sketch_shape(model_dir):
    model = Sketch2Image.from_pretrained(model_dir)
    wide = car_drawing(128, 2, 0, aspect=3.0)  # 384 x 128
    style = Image.new("RGB", (40, 40), (200, 40, 40))
    assert model.generate(wide, style).stack().shape == (1, 3, 11, 32)  # 3:1 at the model's 32 px
    assert model.generate(wide, style, fit="original").stack().shape == (1, 3, 128, 384)
    assert model.generate(wide, style, fit="square").stack().shape == (1, 3, 32, 32)
    mixed = model.generate([wide, car_drawing(64, 2, 0)], style)  # different aspects: one image each
    assert [tuple(t.shape) for t in mixed] == [(3, 11, 32), (3, 32, 32)]
    with pytest.raises(ValueError, match="differ in shape"):
        mixed.stack()
    assert model.mix(wide, [style, style], fit="crop").stack().shape == (1, 3, 11, 32)


def test_export_records_the_training_stroke_width(tmp_path, paired_manifest, image_dir, sketch_dir):
    assert main(["ae", "train", "--data", str(paired_manifest), "--out", str(tmp_path / "ae"), "--steps", "1",
                 "--preset", "64", "--set", "size=32", "--set", "width=8", "--set", "max_width=32",
                 "--set", "style_dim=16", "--set", "cls_k=4", "--batch-size", "4"]) == 0  # fmt: skip
    out = Sketch2Image.from_runs(tmp_path / "ae").save_pretrained(tmp_path / "model")
    width = json.loads((out / "sketch2image.json").read_text())["stroke_width"]
    assert 0.5 < width < 3.0  # the fixture's 1-2 px lines, many diagonal (the estimate counts pixel edges)
    assert Sketch2Image.from_pretrained(out).stroke_width == pytest.approx(width)
    info = json.loads((out / "sketch2image.json").read_text())
    del info["stroke_width"]  # a model exported before the key existed: the size's default
    (out / "sketch2image.json").write_text(json.dumps(info))
    assert Sketch2Image.from_pretrained(out).stroke_width == default_stroke_width(32)


def test_errors_skip_in_the_python_api(model_dir, tmp_path):
    model = Sketch2Image.from_pretrained(model_dir)
    good = sketch_png(tmp_path / "good.png")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    style = Image.new("RGB", (40, 40), (40, 40, 200))
    with pytest.raises(InputError, match="blank.png: the sketch is blank"):
        model.generate([good, blank], style)
    out = model.generate([good, blank, good], style, errors="skip")
    assert len(out) == 3 and out[1] is None and out[0].shape == out[2].shape == (3, 32, 32)
    assert torch.equal(out[0], out[2]) and out.sketches[1] is None and out.sketches[0].shape == (1, 32, 32)
    assert out.pil()[1] is None and out.pil()[0].size == (32, 32)
    with pytest.raises(ValueError, match="skipped"):
        out.stack()


# --- the CLI: folders skip, report and go on -----------------------------------------------------------


def _folder_with_problems(tmp_path):
    sk = tmp_path / "drawings"
    sk.mkdir()
    car_drawing(512, 1, 170).save(sk / "car_thin.png")
    Image.eval(car_drawing(256, 3, 0), lambda v: 255 - v).save(sk / "chalk.png")
    car_drawing(128, 2, 0, aspect=3.0).save(sk / "wide.png")
    Image.new("L", (64, 64), 255).save(sk / "empty.png")
    (sk / "notes.png").write_text("not an image")
    return sk


def test_generate_folder_skips_reports_and_goes_on(model_dir, tmp_path, capsys, caplog):
    sk = _folder_with_problems(tmp_path)
    styles = tmp_path / "styles"
    styles.mkdir()
    for i, c in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (48, 48), c).save(styles / f"s{i}.png")
    out = tmp_path / "out"
    rc = main(["generate", "--model", str(model_dir), "--sketch", str(sk), "--style", str(styles), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1  # something was skipped: scripts notice
    warnings = [m for m in caplog.messages if "skipped" in m]  # printed as "WARNING: skipped ..." by the CLI
    assert len(warnings) == 2
    assert any("empty.png: the sketch is blank" in w for w in warnings)
    assert any("notes.png: cannot read image" in w for w in warnings)
    assert "wrote 6 image(s)" in captured.out and "skipped 2 of 7 input file(s)" in captured.out
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}__s{i}.png" for n in ("car_thin", "chalk", "wide")
                                                          for i in (0, 1)]  # fmt: skip
    assert Image.open(out / "wide__s0.png").size == (32, 11)  # cropped to the drawing's 3:1
    rc = main(["generate", "--model", str(model_dir), "--sketch", str(sk), "--style", str(styles),
               "--out", str(tmp_path / "orig"), "--fit", "original"])  # fmt: skip
    assert rc == 1 and Image.open(tmp_path / "orig" / "wide__s1.png").size == (384, 128)


def test_mix_and_transfer_folders_skip_too(model_dir, tmp_path, capsys, image_dir):
    sk = _folder_with_problems(tmp_path)
    style = [str(p) for p in sorted(image_dir.glob("*.png"))[:2]]
    rc = main(["mix", "--model", str(model_dir), "--sketch", str(sk), "--styles", *style, "--out", str(tmp_path / "m")])
    assert rc == 1 and len(list((tmp_path / "m").glob("*.png"))) == 3
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    for snap in (model_dir / "tom" / "snapshots").glob("*.safetensors"):  # a 4-step TOM draws near-white:
        with safe_open(str(snap), "pt") as f:  # darken its output so that it draws lines to transfer
            meta = f.metadata()
        tensors = load_file(str(snap))
        last = sorted((k for k in tensors if k.endswith(".bias")), key=lambda k: int(k.split(".")[1]))[-1]
        tensors[last] = torch.full_like(tensors[last], -1.0)
        save_file(tensors, str(snap), metadata=meta)
    model = Sketch2Image.from_pretrained(model_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(image_dir.glob("*.png"))[:2]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    done = model.transfer(sorted(photos.glob("*.png")), style[0], errors="skip")
    images, sketches = done.images, done.sketches
    assert [i is None for i in images] == [True, False, False]  # broken.png sorts first
    assert sketches[0] is None and sketches[1].shape == (1, 32, 32)
    capsys.readouterr()
    rc = main(["transfer", "--model", str(model_dir), "--content", str(photos), "--style", style[0],
               "--out", str(tmp_path / "t"), "--sketch-out", str(tmp_path / "ts")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1 and "wrote 2 image(s)" in out and "skipped 1 of 3" in out and "broken.png" in out
    assert sorted(p.name for p in (tmp_path / "t").glob("*.png")) == ["img0.png", "img1.png"]
    assert len(list((tmp_path / "ts").glob("*.png"))) == 2
    # A folder streams batch by batch; output i's noise still comes from seed + i, i over the whole folder.
    for n in model.refiner.noise:
        n.strength.data.fill_(0.5)  # a refiner that has learnt some noise, saved where the CLI reads it
    model.refiner.save_pretrained(model_dir / "refiner")
    for batch in ("1", "3"):
        rc = main(["transfer", "--model", str(model_dir), "--content", str(photos), "--style", style[0], "--out",
                   str(tmp_path / f"n{batch}"), "--batch-size", batch, "--noise", "1", "--seed", "5"])  # fmt: skip
        assert rc == 1
    noisy = model.transfer(sorted(photos.glob("*.png")), style[0], errors="skip", noise=1.0, seed=5)
    for i, name in ((1, "img0.png"), (2, "img1.png")):  # broken.png is position 0
        made = torch.from_numpy(np.array(noisy.pil()[i])).int()
        for batch in ("1", "3"):  # batched float maths differs by ~1e-6: at most one 8-bit level
            assert (_pixels(tmp_path / f"n{batch}" / name) - made).abs().max() <= 1
    assert (_pixels(tmp_path / "n1" / "img1.png") - _pixels(tmp_path / "t" / "img1.png")).abs().max() > 2  # noise on
    with pytest.raises(SystemExit) as refused:
        main(["transfer", "--model", str(model_dir), "--content", str(photos), "--style", style[0],
              "--out", str(tmp_path / "t0"), "--batch-size", "0"])  # fmt: skip
    assert refused.value.code == 2 and "must be a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "t0").exists()
    files = sorted(photos.glob("img*.png"))
    whole = model.transfer(files, style[0], noise=1.0, seed=3)
    tail = model.transfer(files[1:], style[0], noise=1.0, seed=4)
    torch.testing.assert_close(whole[1], tail[0], atol=1e-5, rtol=1e-5)
    assert (whole[1] - model.transfer(files[1:], style[0], noise=1.0, seed=3)[0]).abs().max() > 1e-2
    with pytest.raises(InputError, match="no content images"):
        model.transfer([], style[0])
    with pytest.raises(InputError, match="no sketches"):
        model.generate([], style[0])


def _pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).int()
