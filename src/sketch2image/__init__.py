"""sketch2image: self-supervised sketch-to-image synthesis (Liu, Zhu, Song, Elgammal, AAAI 2021)."""

__version__ = "0.2.0"
