"""Make docs/strokes_figure.png: real-drawing kinds before and after stroke normalisation, and outputs.

    .venv/bin/python docs/strokes_figure.py --model runs/quality_demo_guard/model --out docs/strokes_figure.png

Columns: the drawings the test suite makes itself (tests/test_strokes.py: 1-px grey lines at 128 /
512 / 1024 px, a 3-px brush, grey paper, a noisy uneven scan, white-on-black chalk, a drawing more
than half ink, a 3:1 landscape). Rows: the drawing (padded to a square for display), what the model
sees with ``stroke="none"`` (the drawing as given; a light-red square where it is refused as
blank), what it sees with ``stroke="auto"``, and the model's output for each in one style, cropped
to the drawing's shape and shown on its padded square.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_strokes import DRAWINGS  # noqa: E402  (the suite's own synthetic drawings)

from sketch2image.data.images import open_rgb  # noqa: E402
from sketch2image.errors import InputError  # noqa: E402
from sketch2image.pipeline import Sketch2Image  # noqa: E402
from sketch2image.processing import sketch_grey  # noqa: E402
from sketch2image.train.common import save_grid  # noqa: E402

CELL = 96


def square(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) padded with white to a square and resized to CELL (area, nearest when enlarging)."""
    c, h, w = img.shape
    side = max(h, w)
    canvas = torch.ones(c, side, side)
    canvas[:, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = img
    mode = "area" if side > CELL else "nearest"
    return F.interpolate(canvas[None], size=(CELL, CELL), mode=mode)[0].expand(3, -1, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--style", help="style image (default: a held-out OpenMoji from the model's demo data)")
    ap.add_argument("--out", default="docs/strokes_figure.png")
    args = ap.parse_args()
    model = Sketch2Image.from_pretrained(args.model)
    style = open_rgb(args.style) if args.style else None
    if style is None:
        tests = sorted(Path(args.model).parent.glob("openmoji*/images/test/*.png"))
        style = open_rgb(tests[len(tests) // 3])
    refused = torch.tensor([1.0, 0.8, 0.8])[:, None, None].expand(3, CELL, CELL)
    rows: list[list[torch.Tensor]] = [[], [], [], []]
    for name, make in DRAWINGS.items():
        drawing = make()
        rows[0].append(square(torch.from_numpy(sketch_grey(drawing))[None]))
        try:
            rows[1].append(square(model.processor.sketch(drawing, name, "none")))
        except InputError:
            rows[1].append(refused)
        rows[2].append(square(model.processor.sketch(drawing, name, "auto")))
        out = model.generate(drawing, style, fit="crop")[0]
        rows[3].append(square(out))
    save_grid(Path(args.out), [torch.stack(r) for r in rows])
    print(args.out)


if __name__ == "__main__":
    main()
