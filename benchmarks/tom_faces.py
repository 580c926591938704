"""TOM on real photos: is it stable, and what does every snapshot draw?

Reads finished TOM run folders (and, optionally, logs of runs made elsewhere, e.g. on a GPU)
and writes, for the "Training that cannot fail silently" evidence:

- ``results/tom_faces.json`` + ``.md``: per run, whether every logged value is finite, the
  discriminator's loss and ``d_fake`` (first / median / last / extremes), and the ink of every
  snapshot's sketches over a spread of ``--n`` images (``data/ink.py``: mean ink, blank and
  solid shares);
- ``results/tom_faces_curves.png``: ``loss_d`` and ``d_fake`` against the step for every run;
- ``<figures>/tom_faces_<run>.png``: photos with the sketches of three snapshots (first, middle,
  last). Default ``runs/tom_faces_figures`` (git-ignored): the research image sets must not be
  committed, and these figures show their photos.

    # the runs (CPU, 64 px; faces extracted from ../shared/data/faces128.tar outside the repository)
    s2i tom train --images /tmp/faces128/train --sketches data/openmoji128/sketch_set --out runs/tom_faces_fp32 \\
        --size 64 --batch-size 16 --steps 1000 --set sample_every=100
    s2i tom train ... --out runs/tom_faces_bf16 --size 64 --batch-size 8 --steps 300 --set warmup=120 \\
        --set snapshot_every=20 --set mixed_precision=bf16
    python benchmarks/tom_faces.py --images /tmp/faces128/train \\
        --run cpu_fp32_b16=runs/tom_faces_fp32 --run cpu_bf16_b8=runs/tom_faces_bf16 \\
        --log h100_fp32_b32=benchmarks/results/tom_faces128_h100_fp32.json:spectral
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

from sketch2image.configs import TOMConfig
from sketch2image.data.images import ImageFolder
from sketch2image.data.ink import THRESHOLDS, InkReport, ink_fraction
from sketch2image.figures import save_grid
from sketch2image.sketcher import TOMSketcher

RESULTS = Path(__file__).resolve().parent / "results"


def read_log(spec: str) -> list[dict]:
    """``DIR`` (a run folder's log.jsonl) or ``FILE.json:KEY`` (a saved ``{KEY: {"log": [...]}}``)."""
    path, _, key = spec.partition(":")
    p = Path(path)
    if p.is_dir():
        return [json.loads(line) for line in (p / "log.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(p.read_text())[key]["log"]


def curve_summary(log: list[dict]) -> dict:
    finite = all(math.isfinite(v) for r in log for v in r.values() if isinstance(v, float))
    out: dict = {"steps": log[-1]["step"] if log else 0, "records": len(log), "all_finite": finite}
    for key in ("loss_d", "d_fake"):
        vals = [r[key] for r in log]
        out[key] = {"first": vals[0], "median": statistics.median(vals), "last": vals[-1],
                    "min": min(vals), "max": max(vals)}  # fmt: skip
    return out


def ink_of(run: Path, images: ImageFolder, n: int) -> tuple[dict[str, dict], TOMSketcher, torch.Tensor]:
    sketcher = TOMSketcher.from_pretrained(run)
    spread = torch.linspace(0, len(images) - 1, min(n, len(images))).long().tolist()
    x = torch.stack([images[i]["image"] for i in spread])
    drawn = torch.cat([sketcher(chunk) for chunk in x.split(32)])  # (n, K, H, W)
    finite = torch.isfinite(drawn).flatten(2).all(2)
    ink = ink_fraction(drawn.flatten(0, 1)).view(drawn.shape[:2])
    reports = {name: InkReport.of(ink[:, j], ~finite[:, j]).as_dict() for j, name in enumerate(sketcher.names)}
    return reports, sketcher, x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="the photos TOM was trained on (for the ink and the figure)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="a finished TOM run folder")
    ap.add_argument("--log", action="append", default=[], metavar="NAME=FILE.json:KEY", help="a log made elsewhere")
    ap.add_argument("--n", type=int, default=500, help="images the ink is measured on")
    ap.add_argument("--name", default="tom_faces")
    ap.add_argument("--figures", default="runs/tom_faces_figures", help="where the photo figures go (not committed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    runs = dict(r.split("=", 1) for r in args.run)
    logs = {name: read_log(d) for name, d in runs.items()}
    logs.update({name: read_log(spec) for name, spec in (x.split("=", 1) for x in args.log)})
    results: dict = {"command": " ".join(["python", *sys.argv]), "ink_thresholds": THRESHOLDS, "runs": {}}
    for name, log in logs.items():
        results["runs"][name] = {"curves": curve_summary(log)}
    for name, run in runs.items():
        cfg = {**TOMConfig.LEGACY_DEFAULTS, **json.loads((Path(run) / "config.json").read_text())}
        size = cfg["size"]
        images = ImageFolder(Path(args.images), size, progress=False)
        reports, sketcher, x = ink_of(Path(run), images, args.n)
        keys = ("size", "batch_size", "steps", "mixed_precision", "d_norm", "gan_loss")
        results["runs"][name].update({"config": {k: cfg[k] for k in keys}, "ink": reports})
        k = len(sketcher.names)
        cols = sorted({0, k // 2, k - 1})
        faces = x[torch.linspace(0, len(x) - 1, 8).long()]
        drawn = sketcher(faces)
        rows = [faces] + [drawn[:, c : c + 1] for c in cols]
        save_grid(Path(args.figures) / f"{args.name}_{name}.png", rows)
        results["runs"][name]["figure_snapshots"] = [sketcher.names[c] for c in cols]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, log in logs.items():
        steps = [r["step"] for r in log]
        for ax, key in zip(axes, ("loss_d", "d_fake"), strict=True):
            ax.plot(steps, [r[key] for r in log], label=name, lw=1)
    axes[0].set(title="discriminator loss", xlabel="step", yscale="log")
    axes[1].set(title="d_fake (mean logit on generated sketches)", xlabel="step")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}_curves.png", dpi=110)

    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# {args.name}", "", "```", results["command"], "```", "",
             "| run | steps | all finite | loss_d first / median / last | d_fake first / median / last (min) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["runs"].items():
        c = r["curves"]
        ld, df = c["loss_d"], c["d_fake"]
        lines.append(
            f"| {name} | {c['steps']} | {c['all_finite']} | {ld['first']:.3f} / {ld['median']:.3f} / {ld['last']:.3f} "
            f"| {df['first']:.2f} / {df['median']:.2f} / {df['last']:.2f} ({df['min']:.2f}) |"
        )
    lines += ["", "Ink of every snapshot's sketches (share of pixels darker than mid-grey; blank < 0.2 %, "
              "solid > 75 %):", "", "| run | snapshot | mean ink | blank | solid | non-finite |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["runs"].items():
        for snap, ink in r.get("ink", {}).items():
            lines.append(f"| {name} | {snap} | {ink['mean_ink']:.1%} | {ink['blank']:.1%} | {ink['solid']:.1%} | "
                         f"{ink['non_finite']:.0%} |")  # fmt: skip
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
