"""Small helpers the tests share (fixtures live in conftest.py)."""

from PIL import Image, ImageDraw


def sketch_png(path, size=(40, 40), invert=False, rgba=False):
    img = Image.new("L", size, 255)
    d = ImageDraw.Draw(img)
    d.rectangle((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), outline=0, width=2)
    if invert:
        img = Image.eval(img, lambda v: 255 - v)
    if rgba:
        rgba_img = Image.new("RGBA", size, (0, 0, 0, 0))
        rgba_img.putalpha(Image.eval(img, lambda v: 255 - v))  # lines opaque black, background transparent
        img = rgba_img
    img.save(path)
    return path


def car_drawing(size=128, width=1, ink=170, paper=255, aspect=1.0):
    """A line drawing of a car (body, roof, wheels): ``width``-px strokes of grey ``ink`` on ``paper``."""
    w, h = int(size * aspect), size
    img = Image.new("L", (w, h), paper)
    d = ImageDraw.Draw(img)
    s = h / 128
    d.rectangle((int(w * 0.15), int(60 * s), int(w * 0.85), int(90 * s)), outline=ink, width=width)
    roof = [(0.3, 60), (0.4, 40), (0.6, 40), (0.7, 60)]
    d.polygon([(int(w * x), int(y * s)) for x, y in roof], outline=ink, width=width)
    for cx in (0.3, 0.7):
        r = int(10 * s)
        d.ellipse((int(w * cx) - r, int(90 * s) - r, int(w * cx) + r, int(90 * s) + r), outline=ink, width=width)
    return img


def assert_same_training_state(cut, whole) -> None:
    """Two run folders end in the same latest checkpoint, tensor for tensor: weights, optimiser moments,
    RNG and data-stream generators. A resume that re-initialised any of them would differ."""
    import torch

    from sketch2image.train.checkpoint import latest_checkpoint, load_checkpoint

    (a, meta_a), (b, meta_b) = (load_checkpoint(latest_checkpoint(run)) for run in (cut, whole))
    assert meta_a["step"] == meta_b["step"] and a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed run differs from the uninterrupted one in {differ[:5]}"
    assert any(k.startswith("opt") and ".state." in k for k in a)  # the moments were compared too
