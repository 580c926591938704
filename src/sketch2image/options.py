"""The named choices a user picks from (CLI, web app, Python API), each defined once here.

Importable without torch, so that ``s2i --help`` lists them without loading the networks' stack.
"""

from __future__ import annotations

FITS = ("crop", "square", "original")  # an output's shape: the sketch's aspect, the model's square, its own size
STROKES = ("auto", "none")  # a drawing's lines: normalised to the model's line weight, or as drawn
MIX_MODES = ("stitch", "vector")  # style mixing: regions of the reference images, or a weighted style vector
# What `s2i eval` and `evaluate()` measure when no metric is named (every registered one but LPIPS).
DEFAULT_METRICS = ("fid", "kid", "sr", "sty_rec", "skt_rec", "style_follow", "content_leak", "style_sensitivity",
                   "vgg_perceptual", "psnr", "ssim")  # fmt: skip

__all__ = ["DEFAULT_METRICS", "FITS", "MIX_MODES", "STROKES"]
