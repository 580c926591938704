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
