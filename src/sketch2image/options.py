"""The named choices a user picks from (CLI, web app, Python API), each defined once here.

Importable without torch, so that ``s2i --help`` lists them without loading the networks' stack.
"""

from __future__ import annotations

FITS = ("crop", "square", "original")  # an output's shape: the sketch's aspect, the model's square, its own size
STROKES = ("auto", "none")  # a drawing's lines: normalised to the model's line weight, or as drawn
MIX_MODES = ("stitch", "vector")  # style mixing: regions of the reference images, or a weighted style vector
# The auto-encoder's loss sets, by name: each sets all four self-supervised weights. "paper": the style and
# content triplets, the momentum style classification and the content MI (paper Eq. 7-10), with the
# classification at 0.2, where its gradient on E_style stays within ~10x the reconstruction's (at 1.0 it was 5-29x).
SSL_WEIGHTS = ("w_style_triplet", "w_content_triplet", "w_style_cls", "w_content_mi")
LOSSES: dict[str, dict[str, float]] = {
    "reconstruction": dict.fromkeys(SSL_WEIGHTS, 0.0),
    "paper": {"w_style_triplet": 1.0, "w_content_triplet": 1.0, "w_style_cls": 0.2, "w_content_mi": 1.0},
}
# What `s2i eval` and `evaluate()` measure when no metric is named (every registered one but LPIPS).
DEFAULT_METRICS = ("fid", "kid", "sr", "sty_rec", "skt_rec", "style_follow", "content_leak", "style_sensitivity",
                   "vgg_perceptual", "psnr", "ssim")  # fmt: skip

__all__ = ["DEFAULT_METRICS", "FITS", "LOSSES", "MIX_MODES", "SSL_WEIGHTS", "STROKES"]
