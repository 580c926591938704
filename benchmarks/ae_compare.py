"""Compare auto-encoder runs on held-out OpenMoji: paired reconstruction with the artists' own line art,
a sketch × style grid per run, and the training curves.

    .venv/bin/python benchmarks/ae_compare.py --openmoji s2i-demo/openmoji128 \
        --run full=runs/ae_full --run vanilla=runs/ae_vanilla --out docs/ae

Writes ``<out>_compare.json``/``.md``, ``<out>_<name>_grid.png`` and ``<out>_curves.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sketch2image.data.paired import load_pairs_by_id
from sketch2image.figures import cross_grid
from sketch2image.metrics.evaluate import evaluate, load_held_out
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.pipeline import Sketch2Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--openmoji", required=True, help="folder written by `s2i data openmoji`")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    ap.add_argument("--out", required=True, help="output prefix")
    ap.add_argument("--n", type=int, default=6, help="sketches and styles in each grid")
    args = ap.parse_args()
    torch.set_num_threads(2)
    om = Path(args.openmoji)
    images, lines = om / "images" / "test", om / "lines" / "test"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = dict(r.split("=", 1) for r in args.run)
    results, curves = {}, {}
    for name, run in runs.items():
        model = SketchAutoEncoder.from_pretrained(run)
        _, x, s = load_held_out(images, lines, model.cfg.size)
        report = evaluate(Sketch2Image(model), x, s, ["mse", "psnr"], refine=False, progress=False)["metrics"]
        mse = report["mse"]["value"]
        held_out = {"n": report["mse"]["n"], "mse": mse, "psnr_db": report["psnr"]["value"], "rmse": mse**0.5}
        results[name] = {"run": run, "config": json.loads((Path(run) / "config.json").read_text()),
                         "held_out": held_out}  # fmt: skip
        ids, x, s = load_pairs_by_id(images, lines, model.cfg.size)
        pick = torch.linspace(0, len(ids) - 1, 2 * args.n).long()
        sketches, styles = s[pick[::2]], x[pick[1::2]]  # disjoint held-out emojis for sketches and styles
        cross_grid(model, sketches, styles, out.with_name(f"{out.name}_{name}_grid.png"))
        log = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
        curves[name] = ([r["step"] for r in log], [r["rec"] for r in log])
        results[name]["final_train_rec"] = log[-1]["rec"]
    (out.with_name(f"{out.name}_compare.json")).write_text(json.dumps(results, indent=2) + "\n")
    lines_md = ["| run | held-out pairs | MSE | PSNR (dB) | last training rec. MSE |", "|---|---|---|---|---|"]
    for name, r in results.items():
        h = r["held_out"]
        lines_md.append(f"| {name} | {h['n']} | {h['mse']:.4f} | {h['psnr_db']:.2f} | {r['final_train_rec']:.4f} |")
    (out.with_name(f"{out.name}_compare.md")).write_text("\n".join(lines_md) + "\n")
    print("\n".join(lines_md))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (steps, rec) in curves.items():
        ax.plot(steps, rec, label=name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("reconstruction MSE (training batch)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_name(f"{out.name}_curves.png"), dpi=120)


if __name__ == "__main__":
    main()
