"""Paired reconstruction of held-out images from their own sketch (with themselves as style).

The auto-encoder's honest check: images it never saw, sketches from another source (e.g. the
OpenMoji artists' line art), pairs matched by file id.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sketch2image.data.paired import load_pairs_by_id
from sketch2image.nets.autoencoder import SketchAutoEncoder


@torch.inference_mode()
def paired_reconstruction(model: SketchAutoEncoder, images: Path, sketches: Path, batch_size: int = 32) -> dict:
    """Mean squared error and PSNR (images in [0, 1]) over all id-matched pairs."""
    model.eval()
    ids, x, s = load_pairs_by_id(images, sketches, model.cfg.size)
    device = next(model.parameters()).device
    se = []
    for i in range(0, len(ids), batch_size):
        xb, sb = x[i : i + batch_size].to(device), s[i : i + batch_size].to(device)
        se.append((model(sb, xb) - xb).pow(2).flatten(1).mean(1).cpu())
    mse = torch.cat(se)
    psnr = (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).mean().item()
    return {"n": len(ids), "mse": mse.mean().item(), "psnr_db": psnr, "rmse": math.sqrt(mse.mean().item())}


@torch.inference_mode()
def cross_grid(model: SketchAutoEncoder, sketches: torch.Tensor, styles: torch.Tensor, out: Path) -> Path:
    """Every sketch × every style: a header row of style images, then per sketch the sketch and its outputs."""
    from sketch2image.figures import save_grid

    model.eval()
    device = next(model.parameters()).device
    blank = torch.ones(1, 3, *styles.shape[-2:])
    rows = [torch.cat([blank, styles.cpu()])]
    for s in sketches:
        batch = s.unsqueeze(0).expand(len(styles), -1, -1, -1).to(device)
        rows.append(torch.cat([s.expand(3, -1, -1).unsqueeze(0).cpu(), model(batch, styles.to(device)).cpu()]))
    return save_grid(out, rows)
