"""Auto-encoder speed: one training iteration at 64/128/256 px (batch 8, 16) and inference latency
(batch 1) at 128/256/512 px, each configuration in its own process so peak RSS is its own.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/ae_speed.py

A training iteration is the full paper-faithful step: augmentation, both encoders (style on the
augmented and the original image, content on two sketches), decoder, all five loss terms,
backward, Adam steps of the model and the classifier head.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from accelerate import Accelerator
from common import finish_rows, flops, peak_rss_mb, setup, timed, write

from sketch2image.configs import AEConfig
from sketch2image.data.paired import PairedData
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.options import LOSSES
from sketch2image.train.ae import AETrainer

K = 4  # sketches per image in the synthetic paired data


def one(kind: str, size: int, batch: int, iters: int) -> dict:
    info = setup()
    torch.manual_seed(0)
    # The paper's loss set, as the stored results: the dearer one (a second, classification batch per step).
    cfg = AEConfig.preset(size, batch_size=max(batch, 2), cls_k=64, **LOSSES["paper"])
    if kind == "train":
        n = 64
        data = PairedData(
            [str(i) for i in range(n)],
            torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8),
            torch.randint(0, 256, (n, K, size, size), dtype=torch.uint8),
        )
        trainer = AETrainer(cfg, data, Accelerator(cpu=True))
        step = [0]

        def fn():
            step[0] += 1
            trainer.step(step[0])

        t = timed(fn, iters)
        params = sum(trainer.model.parameter_counts().values())
    else:
        model = SketchAutoEncoder(cfg.model_config()).eval()
        sk, st = torch.rand(batch, 1, size, size), torch.rand(batch, 3, size, size)

        def fn():
            with torch.inference_mode():
                model(sk, st)

        t = timed(fn, iters)
        params = sum(model.parameter_counts().values())
    return {
        "stage": f"AE {kind}",
        "size": size,
        "batch": batch,
        **t,
        "flops": flops(fn),
        "items": batch if kind == "infer" else 1,
        "params": params,
        "peak_rss_mb": peak_rss_mb(),
        "machine": info,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3, metavar=("KIND", "SIZE", "BATCH"))
    ap.add_argument("--iters", type=int, default=7)
    args = ap.parse_args()
    if args.one:
        kind, size, batch = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(one(kind, size, batch, args.iters if kind == "train" else 15)))
        return
    configs = [("train", s, b) for s in (64, 128, 256) for b in (8, 16)] + [("infer", s, 1) for s in (128, 256, 512)]
    rows = []
    for kind, size, batch in configs:
        out = subprocess.run(
            [sys.executable, __file__, "--one", kind, str(size), str(batch), "--iters", str(args.iters)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1]["stage"], size, batch, f"{rows[-1]['median_s']:.3f}s", flush=True)
    machine = rows[0].pop("machine")
    for r in rows:
        r.pop("machine", None)
    finish_rows(rows)
    _, m = write({"machine": machine, "rows": rows}, "ae_speed", rows)
    print(m.read_text())


if __name__ == "__main__":
    main()
