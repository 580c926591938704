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
