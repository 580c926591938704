import json

import numpy as np
import pytest
import torch
from helpers import sketch_png
from PIL import Image, ImageDraw

from sketch2image.cli import main
from sketch2image.errors import CheckpointError, InputError
from sketch2image.pipeline import Sketch2Image
from sketch2image.processing import normalize_sketch, stitch

# --- sketch normalisation ----------------------------------------------------------------------


def test_normalize_sketch_variants(tmp_path):
    plain = normalize_sketch(sketch_png(tmp_path / "a.png"), 32)
    assert plain.shape == (1, 32, 32) and plain.min() < 0.5 and np.median(plain.numpy()) > 0.9
    inverted = normalize_sketch(sketch_png(tmp_path / "b.png", invert=True), 32)
    assert torch.allclose(inverted, plain, atol=0.02)  # white-on-black detected and inverted
    transparent = normalize_sketch(sketch_png(tmp_path / "c.png", rgba=True), 32)
    assert torch.allclose(transparent, plain, atol=0.02)  # alpha composited on white
    wide = normalize_sketch(sketch_png(tmp_path / "d.png", size=(80, 20)), 32)
    assert (wide[0, :10] > 0.99).all() and (wide[0, -10:] > 0.99).all()  # padded with white, not stretched
    colour = Image.new("RGB", (30, 30), (255, 255, 255))
    ImageDraw.Draw(colour).line((0, 15, 30, 15), fill=(200, 0, 0), width=3)
    assert normalize_sketch(colour, 32).shape == (1, 32, 32)
    with pytest.raises(InputError, match="blank"):
        normalize_sketch(Image.new("L", (20, 20), 255), 32)
    with pytest.raises(InputError, match="blank"):
        normalize_sketch(Image.new("L", (20, 20), 0), 32)  # all black: inverted to all white


def test_stitch_halves_and_quadrants():
    s = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(4)])
    two = stitch(s[:2])
    assert (two[:, :, :2] == 0).all() and (two[:, :, 2:] == 1).all()
    four = stitch(s)
    assert four[0, 0, 0] == 0 and four[0, 0, 3] == 1 and four[0, 3, 0] == 2 and four[0, 3, 3] == 3
    with pytest.raises(InputError):
        stitch(s[:3])


# --- the pipeline ------------------------------------------------------------------------------


def test_generate_mix_transfer(model_dir, tmp_path, image_dir):
    model = Sketch2Image.from_pretrained(model_dir)
    sk = sketch_png(tmp_path / "s.png", size=(50, 30))
    styles = sorted(image_dir.glob("*.png"))[:2]
    one = model.generate(sk, styles[0]).stack()
    assert one.shape == (1, 3, 19, 32) and 0 <= one.min() and one.max() <= 1  # 50x30 sketch: cropped to 5:3
    square = model.generate(sk, styles[0], fit="square").stack()
    assert square.shape == (1, 3, 32, 32) and torch.equal(square[:, :, 6:25], one)  # the crop is the content box
    assert model.generate(sk, styles[0], fit="original").stack().shape == (1, 3, 30, 50)  # the sketch's own size
    assert model.generate([sk, sk], styles).stack().shape == (2, 3, 19, 32)
    assert model.generate(sk, styles).stack().shape == (2, 3, 19, 32)  # one sketch broadcast over styles
    ae_only = model.generate(sk, styles[0], refine=False).stack()
    assert not torch.allclose(ae_only, one)
    # vector mixing with all weight on one style equals that style
    assert torch.allclose(model.mix(sk, styles, [1.0, 0.0], "vector").stack(), one, atol=1e-5)
    assert torch.allclose(model.mix(sk, [styles[0], styles[0]], mode="stitch").stack(), one, atol=1e-5)
    assert not torch.allclose(model.mix(sk, styles, [0.0, 1.0], "vector").stack(), one)
    with pytest.raises(InputError, match="weights"):
        model.mix(sk, styles, [1.0], "vector")
    last = model.tom.generators[0].body[-1]  # a 4-step TOM draws near-white; steer its output bias
    with torch.no_grad():
        last.bias.fill_(10.0)
    with pytest.raises(InputError, match="empty sketch"):
        model.transfer(styles[0], styles[1])
    with torch.no_grad():
        last.bias.fill_(-1.0)
    done = model.transfer(styles[0], styles[1])
    out, sketches = done.stack(), torch.stack(done.sketches)
    assert out.shape == (1, 3, 32, 32) and sketches.shape == (1, 1, 32, 32)
    expected = model.decode(sketches, model.style_vectors(torch.stack(model.processor.styles([styles[1]]))), True)
    assert torch.allclose(out, expected, atol=1e-5)
    card = (model_dir / "README.md").read_text()
    assert "tiny shapes" in card and "3 TOM snapshots" in card


def test_from_pretrained_refuses_bad_folders(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="sketch2image.json"):
        Sketch2Image.from_pretrained(tmp_path)
    info = json.loads((model_dir / "sketch2image.json").read_text())
    (model_dir / "sketch2image.json").write_text(json.dumps({**info, "format": "sketch2image.model/99"}))
    with pytest.raises(CheckpointError, match="model/99"):
        Sketch2Image.from_pretrained(model_dir)
    (model_dir / "sketch2image.json").write_text(json.dumps(info))
    (model_dir / "ae" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no auto-encoder"):
        Sketch2Image.from_pretrained(model_dir)


def test_export_leaves_nothing_on_failure(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no_ae: folder not found"):
        Sketch2Image.from_runs(tmp_path / "no_ae")
    model = Sketch2Image.from_pretrained(model_dir)
    with torch.no_grad():
        next(model.refiner.parameters()).fill_(float("nan"))  # the AE is written, then the refiner refuses
    with pytest.raises(CheckpointError, match="non-finite"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(InputError, match="already exists"):
        model.save_pretrained(model_dir)


# --- CLI bad input: one line, exit != 0, nothing written -------------------------------------------


def _bad_inputs(tmp_path, image_dir):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (30, 30), 255).save(tmp_path / "blank.png")
    (tmp_path / "empty_styles").mkdir()
    (tmp_path / "empty_styles" / "readme.txt").write_text("no images here")
    good_style = str(sorted(image_dir.glob("*.png"))[0])
    good_sketch = str(sketch_png(tmp_path / "ok.png"))
    return good_sketch, good_style


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_sketch", "missing.png"),
        ("non_image", "notes.png"),
        ("blank", "blank"),
        ("huge", "too large"),
        ("empty_style_dir", "empty_styles"),
        ("incomplete_model", "sketch2image.json"),
        ("other_version", "model/2"),
    ],
)
def test_generate_bad_input(case, needle, model_dir, tmp_path, image_dir, capsys, monkeypatch):
    good_sketch, good_style = _bad_inputs(tmp_path, image_dir)
    model, sketch, style = str(model_dir), good_sketch, good_style
    if case == "missing_sketch":
        sketch = str(tmp_path / "missing.png")
    elif case == "non_image":
        sketch = str(tmp_path / "notes.png")
    elif case == "blank":
        sketch = str(tmp_path / "blank.png")
    elif case == "huge":
        import sketch2image.data.images as images

        monkeypatch.setattr(images, "MAX_PIXELS", 100)
    elif case == "empty_style_dir":
        style = str(tmp_path / "empty_styles")
    elif case == "incomplete_model":
        (model_dir / "sketch2image.json").unlink()
    elif case == "other_version":
        info = json.loads((model_dir / "sketch2image.json").read_text())
        (model_dir / "sketch2image.json").write_text(json.dumps({**info, "format": "sketch2image.model/2"}))
    out = tmp_path / "outputs"
    rc = main(["generate", "--model", model, "--sketch", sketch, "--style", style, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_the_auto_encoder_only_path_paints_in_the_style_it_was_given(model_dir, tmp_path, image_dir):
    """--no-refine (and refine=False) must use the style asked for: the fixture's AE depends on it."""
    model = Sketch2Image.from_pretrained(model_dir)
    sk = sketch_png(tmp_path / "s.png")
    a, b = sorted(image_dir.glob("*.png"))[:2]
    ae_a, ae_b = (model.generate(sk, style, refine=False).stack() for style in (a, b))
    assert (ae_a - ae_b).abs().max() > 0.05
    out = tmp_path / "out.png"
    args = ["generate", "--model", str(model_dir), "--sketch", str(sk), "--style", str(b), "--out", str(out)]
    assert main([*args, "--no-refine"]) == 0
    got = torch.from_numpy(np.asarray(Image.open(out).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert got.shape == ae_b[0].shape
    assert (got - ae_b[0]).abs().max() <= 1 / 255 and (got - ae_a[0]).abs().max() > 0.05


def test_generate_folders_cross_and_paired(model_dir, tmp_path, image_dir):
    sk_dir = tmp_path / "user_sketches"
    sk_dir.mkdir()
    sketch_png(sk_dir / "img0.png")
    sketch_png(sk_dir / "img1.png", size=(20, 50))
    args = ["generate", "--model", str(model_dir), "--sketch", str(sk_dir), "--style", str(image_dir)]
    out = tmp_path / "cross"
    assert main([*args, "--out", str(out)]) == 0
    assert len(list(out.rglob("*.png"))) == 2 * 6
    assert (out / "img1__sub" / "nested.png").is_file()
    paired = tmp_path / "paired"
    assert main([*args, "--out", str(paired), "--pair-by-name", "--no-refine"]) == 0
    assert sorted(p.name for p in paired.glob("*.png")) == ["img0.png", "img1.png"]
    assert Image.open(paired / "img0.png").size == (32, 32)


def test_demo_result_grid(model_dir, tmp_path):
    from sketch2image.data.openmoji import render_openmoji
    from sketch2image.demo import result_grid

    data = tmp_path / "om"
    render_openmoji(data, 32, limit=30, test_fraction=0.3, n_sketches=4, workers=1, progress=False)
    model = Sketch2Image.from_pretrained(model_dir)
    frame = torch.ones(1, 1, 32, 32)
    frame[..., 8:24, 8] = 0  # a 4-step TOM draws near-white: stand in a sketcher that draws a line
    model.tom = lambda images, snapshot=None: frame.expand(len(images), 3 if snapshot is None else 1, -1, -1)
    grid = Image.open(result_grid(model, data, tmp_path / "grid.png", n_styles=3))
    cell = 32 + 2
    # rows: header, 4 line-art, 2 TOM, mixing, transfer, its content images = 10;
    # columns: the mixing row is widest (reference + stitched + 3 vector weights) = 5
    assert grid.size == (5 * cell + 2, 10 * cell + 2)


def test_demo_size_keeps_the_preset_settings():
    from sketch2image.configs import AE_PRESETS
    from sketch2image.demo import FAST, demo_preset

    p = demo_preset(fast=True, size=128)
    assert p.size == p.tom.size == p.ae.size == 128 and p.ae.width == AE_PRESETS[128]["width"]
    # The fast preset's own settings stay (before: the AE went back to the 1000-step defaults).
    assert (p.ae.steps, p.ae.batch_size, p.ae.cls_k, p.ae.cls_every) == (FAST.ae.steps, 8, 64, 40)
    assert p.tom.steps == FAST.tom.steps and p.gan == FAST.gan
    assert demo_preset(fast=True) is FAST


def test_generate_pairs_batches_without_changing_the_pictures(model_dir, tmp_path):
    model = Sketch2Image.from_pretrained(model_dir, noise=1.0)  # noise on: the per-output seeds must hold
    for n in model.refiner.noise:
        n.strength.data.fill_(0.5)  # a refiner that has learnt some noise
    drawn = [sketch_png(tmp_path / "a.png"), sketch_png(tmp_path / "b.png", (60, 30))]
    sketches, shapes = model.processor.sketches(drawn)
    styles = model.processor.styles([torch.rand(3, 40, 40), torch.rand(3, 40, 40)])
    styles.append(None)  # a style that could not be read
    pairs = [(a, b) for a in range(2) for b in range(3)]
    one = dict(model.generate_pairs(sketches, styles, pairs, shapes=shapes, batch_size=1))
    many = dict(model.generate_pairs(sketches, styles, pairs, shapes=shapes, batch_size=3))
    assert sorted(one) == sorted(many) == [0, 1, 3, 4]  # the pairs with the missing style are left out
    assert all(torch.allclose(one[i], many[i], atol=1e-5) for i in one)  # batched float maths: ~1e-6 apart
    assert one[0].shape == (3, 32, 32) and one[3].shape == (3, 16, 32)  # cropped to each sketch's aspect
    assert not torch.equal(one[0], one[1])  # another style, another picture
    direct = model.generate(sketch_png(tmp_path / "b.png", (60, 30)), styles[1], seed=4)
    assert torch.allclose(direct[0], one[4], atol=1e-5)  # output 4's noise comes from seed + 4, as in generate
    assert not torch.allclose(model.generate(sketch_png(tmp_path / "b.png", (60, 30)), styles[1], seed=5)[0], one[4])
