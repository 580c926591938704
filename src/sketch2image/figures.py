"""Sample grids: rows of images as one PNG (training samples, the demo's figures, the AE's cross grid)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from sketch2image.storage import atomic_file


def save_grid(path: Path, rows: list[torch.Tensor], pad: int = 2) -> Path:
    """Save rows of equally sized images (each (N, C, H, W) in [0, 1]) as one PNG grid."""
    rows = [r.detach().float().cpu().clamp(0, 1) for r in rows]
    rows = [r.expand(-1, 3, -1, -1) if r.shape[1] == 1 else r for r in rows]
    n = max(r.shape[0] for r in rows)
    tiles = []
    for r in rows:
        if r.shape[0] < n:
            r = torch.cat([r, torch.ones(n - r.shape[0], *r.shape[1:])])
        tiles.append(r)
    grid = make_grid(torch.cat(tiles), nrow=n, padding=pad, pad_value=1.0)
    with atomic_file(path) as tmp:
        save_image(grid, tmp)
    return Path(path)


@torch.inference_mode()
def cross_grid(model: torch.nn.Module, sketches: torch.Tensor, styles: torch.Tensor, out: Path) -> Path:
    """Every sketch × every style through an auto-encoder (``model(sketches, styles)``): a header row of
    the style images, then per sketch the sketch and its outputs."""
    model.eval()
    device = next(model.parameters()).device
    blank = torch.ones(1, 3, *styles.shape[-2:])
    rows = [torch.cat([blank, styles.cpu()])]
    for s in sketches:
        batch = s.unsqueeze(0).expand(len(styles), -1, -1, -1).to(device)
        rows.append(torch.cat([s.expand(3, -1, -1).unsqueeze(0).cpu(), model(batch, styles.to(device)).cpu()]))
    return save_grid(out, rows)
