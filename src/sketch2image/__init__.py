"""sketch2image: self-supervised sketch-to-image synthesis (Liu, Zhu, Song, Elgammal, AAAI 2021).

``from sketch2image import Sketch2Image`` is the model: ``Sketch2Image.from_pretrained(folder)``. It is
imported on first use, so that ``import sketch2image`` (and ``s2i --help``) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sketch2image.version import __version__

__all__ = ["Sketch2Image", "__version__"]

if TYPE_CHECKING:
    from sketch2image.pipeline import Sketch2Image


def __getattr__(name: str) -> Any:
    if name == "Sketch2Image":
        from sketch2image.pipeline import Sketch2Image

        return Sketch2Image
    raise AttributeError(f"module 'sketch2image' has no attribute {name!r}")
