"""TOM speed: training iterations/s and sketch inference images/s at 128 and 256 px, batch 4 and 8.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/tom_speed.py

Synthetic inputs of the stated shapes; the real pretrained VGG-19 (it is most of the cost).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from accelerate import Accelerator
from common import finish_rows, flops, peak_rss_mb, setup, timed, write

from sketch2image.configs import TOMConfig
from sketch2image.nets.tom import SketchGenerator, count_parameters
from sketch2image.nets.vgg import load_vgg
from sketch2image.sketcher import TOMSketcher
from sketch2image.train.tom import SketchStats, TOMTrainer, stroke_variants


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--iters", type=int, default=7)
    args = ap.parse_args()
    info = setup()
    torch.manual_seed(0)
    vgg = load_vgg()
    acc = Accelerator(cpu=True)
    rows, results = [], {"machine": info, "train": [], "inference": []}
    for size in args.sizes:
        cfg = replace(TOMConfig(), size=size)
        sketches = (torch.rand(20, 1, size, size) > 0.05).float()
        stats = SketchStats.compute(vgg, stroke_variants(sketches, cfg.stroke_variants), cfg)
        for batch in args.batches:
            trainer = TOMTrainer(replace(cfg, batch_size=batch), vgg, stats, acc)
            images = torch.rand(batch, 3, size, size)
            n = [0]

            def step():
                n[0] += 1
                trainer.step(images, n[0])

            t = timed(step, args.iters)
            row = {
                "stage": "TOM train",
                "size": size,
                "batch": batch,
                **t,
                "flops": flops(step),
                "params": count_parameters(trainer.g),
                "d_params": count_parameters(trainer.d),
                "peak_rss_mb": peak_rss_mb(),
            }
            results["train"].append(row)
            rows.append(row)
        # Inference: one snapshot (VGG + G), eval mode, inference_mode.
        sk = TOMSketcher(cfg, [SketchGenerator(cfg.feature_layer, cfg.g_width, cfg.g_max_width)], ["g"], vgg)
        for batch in [1, *args.batches]:
            x = torch.rand(batch, 3, size, size)
            t = timed(lambda: sk(x), 15)
            row = {
                "stage": "TOM sketch (1 snapshot)",
                "size": size,
                "batch": batch,
                **t,
                "items": batch,
                "flops": flops(lambda: sk(x)),
                "params": count_parameters(sk.generators),
                "d_params": 0,
                "peak_rss_mb": peak_rss_mb(),
            }
            results["inference"].append(row)
            rows.append(row)
    finish_rows(rows)
    _, m = write(results, "tom_speed", rows)
    print(m.read_text())


if __name__ == "__main__":
    main()
