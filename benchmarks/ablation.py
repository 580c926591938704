"""The paper's ablations (Table 2; appendix Tables 3-4) as one run under equal budgets.

Every variant trains the auto-encoder from the same seed on the same paired data (a TOM
sketch manifest) for the same number of steps, and is evaluated on the held-out split at
fixed steps with the metric registry (mismatched styles for FID / SR / Sty-Rec; paired
reconstruction for the perceptual distance and PSNR). The auto-encoder output is evaluated
(no refiner), as in the paper's ablation.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/ablation.py \
        --manifest runs/demo/sketches/manifest.json --data runs/demo/openmoji64 --steps 300 --eval-every 100
    # "do the self-supervised losses help?": the four rows and the style-position row, two seeds
    # (an image folder: first `quality.py --dataset DIR --work W ...`, then
    #  --manifest W/sketches/manifest.json --images W/data/images/test --sketches W/test_sketches/s00)
    ... ablation.py --manifest M --data D --name ablation_openmoji64 --variants vanilla,triplets,cls_mi,all,style_hi \
        --steps 1500 --eval-every 500 --seeds 0 1 --bootstrap 20

Writes results/<name>.json (every variant's curve per seed), results/<name>.md (the final table:
means over seeds, the spread between seeds, and the bootstrap spread of FID/KID over the held-out
set) and results/<name>.png (FID and perceptual distance against steps). Each finished variant
and seed is stored as it completes (results/ablation_parts/, committed; a picture of what its final model
paints goes to <--work>/grids/, not committed: it shows held-out images), keyed by the settings and
a sha256 of the training and held-out pixels (its first 8 digits in the file name): an interrupted run
continues, and a later session adds variants or seeds to the same table only if it trains on the same
data. The same ``quality.py`` command regenerates the same data only on the same kind of CPU: TOM's
training differs in the last bits between kernel sets (AVX2, AVX-512), and so do its sketches; rows of
other data stay stored beside them, and each table gathers only the rows of its own data. Within a row, the
trainer's state is saved at every evaluation (``--work``, default runs/ablation_work/): a row that was
cut off goes on from its last evaluation when the same command runs again, and a finished row's last
state is kept, so a longer ``--steps`` (all else equal) extends it instead of starting over: the
training has no schedule tied to the budget, so steps 1..N of a longer run are those of the shorter one.
``--name N --from-parts DATA`` rebuilds N's three files from its stored rows on that data alone (rows run
one at a time, or on different machines that reproduce the same data, make one table).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from common import setup

from sketch2image.configs import AEConfig
from sketch2image.data.paired import PairedData, PairedFiles
from sketch2image.figures import save_grid
from sketch2image.metrics.evaluate import derangement, evaluate, held_out_dirs, load_held_out
from sketch2image.options import LOSSES
from sketch2image.pipeline import Sketch2Image
from sketch2image.sketcher import TOMSketcher
from sketch2image.storage import atomic_write_json
from sketch2image.train.ae import AETrainer
from sketch2image.train.checkpoint import load_checkpoint, save_checkpoint
from sketch2image.train.common import seed_everything

SSL_OFF = LOSSES["reconstruction"]
ON = LOSSES["paper"]  # each term at the weight of the paper's loss set
# name -> (table, overrides of the default (reconstruction-only) preset, label)
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "vanilla": ("losses", {**SSL_OFF, "dmi": "none"}, "vanilla AE (reconstruction only, no DMI)"),
    "vanilla_dmi": ("losses", SSL_OFF, "reconstruction only, with Feat-DMI"),
    "style_triplet": ("losses", {**SSL_OFF, "w_style_triplet": ON["w_style_triplet"]}, "+ style triplet"),
    "content_triplet": ("losses", {**SSL_OFF, "w_content_triplet": ON["w_content_triplet"]}, "+ content triplet"),
    "style_cls": ("losses", {**SSL_OFF, "w_style_cls": ON["w_style_cls"]}, "+ momentum style classification"),
    "content_mi": (
        "losses",
        {**SSL_OFF, "w_style_cls": ON["w_style_cls"], "w_content_mi": ON["w_content_mi"]},
        "+ content MI (needs the head)",
    ),
    "triplets": (
        "losses",
        {**SSL_OFF, "w_style_triplet": ON["w_style_triplet"], "w_content_triplet": ON["w_content_triplet"]},
        "+ both triplets",
    ),
    "cls_mi": (
        "losses",
        {**SSL_OFF, "w_style_cls": ON["w_style_cls"], "w_content_mi": ON["w_content_mi"]},
        "+ classification and content MI",
    ),
    "all": ("all", ON, "all losses, Feat-DMI, multiplicative style (ours)"),
    "style_hi": (
        "injection",
        {**ON, "style_min_res": 32},
        "all losses, style only on the 32 and 64 px maps (paper-like)",
    ),
    "dmi_none": ("dmi", {**ON, "dmi": "none"}, "all losses, no DMI"),
    "dmi_sketch": ("dmi", {**ON, "dmi": "sketch"}, "all losses, DMI on the sketch"),
    "inject_adain": ("injection", {**ON, "style_injection": "adain"}, "all losses, AdaIN style injection"),
    "inject_add": ("injection", {**ON, "style_injection": "add"}, "all losses, additive style injection"),
}
METRICS = ["fid", "kid", "sr", "sty_rec", "skt_rec", "style_follow", "content_leak", "style_sensitivity",
           "vgg_perceptual", "psnr"]  # fmt: skip
TABLE = [("fid", "FID ↓", 2), ("kid", "KID ↓", 4), ("style_follow", "style follow ↓", 4),
         ("content_leak", "content leak ↓", 4), ("style_sensitivity", "style sens. ↑", 4),
         ("skt_rec", "Skt-Rec ↓", 4), ("vgg_perceptual", "VGG perceptual ↓", 4), ("sr", "SR ↑", 4),
         ("sty_rec", "Sty-Rec (own E) ↑", 4), ("cls_acc", "cls acc ↑", 3), ("probe_acc", "probe acc ↓", 3),
         ("psnr", "PSNR ↑", 2)]  # fmt: skip
# What the stored parts were made with: 2 = every image seen (epoch sampling), content constraints on every
# level, MI probes, the refiner's reading of the reconstruction term, the package's FID resampling.
PROTOCOL = 2
NEED_TOM = ("skt_rec", "content_leak")
PARTS = Path(__file__).parent / "results" / "ablation_parts"
ENV = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000"  # the allocator the timings are taken under


def fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 of the pixels every variant trains and is scored on: stored parts are reused only for the
    same data, whichever machine, session or path produced it."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def part_path(table: str, name: str, seed: int, settings: dict) -> Path:
    """A finished row, named by its data too: TOM's training is not bit-reproducible across CPU kernel sets
    (AVX2 and AVX-512 machines train different TOMs, hence different sketches), so rows made on different
    data are kept side by side and a table only ever gathers the rows of its own data."""
    return PARTS / f"{table}__{name}__s{seed}__{settings['data_sha256'][:8]}.json"


def work_dir(args, name: str, seed: int) -> Path:
    return Path(args.work) / f"{args.name}__{name}__s{seed}"


def _but_budget(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "steps"}


def resume(trainer: AETrainer, work: Path, settings: dict) -> tuple[list[dict], float, int]:
    """(curve, training seconds, next step) of an interrupted row: the trainer's state at its last evaluation,
    if one was saved under the same settings; else a fresh start."""
    progress = work / "progress.json"
    if not progress.is_file():
        return [], 0.0, 1
    saved = json.loads(progress.read_text())
    path = work / "checkpoints" / f"step_{saved['step']:07d}"
    same = _but_budget(saved.get("settings", {})) == _but_budget(settings)
    if not same or saved["step"] > settings["steps"] or not (path / "meta.json").is_file():
        return [], 0.0, 1
    trainer.load_state(*load_checkpoint(path), str(path))
    print(f"  resumed at step {saved['step']} from {path}", flush=True)
    curve = saved["curve"]
    if saved["step"] < settings["steps"]:  # extended: the old end is an ordinary point of the longer curve, or none
        curve = [{k: v for k, v in row.items() if not k.endswith("_bootstrap_std")} for row in curve
                 if row["step"] % settings["eval_every"] == 0]  # fmt: skip
    return curve, saved["train_s"], saved["step"] + 1


def run_variant(name: str, args, data: PairedData, held: tuple[torch.Tensor, torch.Tensor], seed: int,
                settings: dict) -> dict:  # fmt: skip
    overrides = VARIANTS[name][1]
    cfg = AEConfig.preset(args.size, batch_size=args.batch_size, steps=args.steps, seed=seed, arch=args.arch,
                          cls_k=min(args.cls_k, len(data)), cls_every=args.cls_every, **overrides)  # fmt: skip
    seed_everything(cfg.seed)
    trainer = AETrainer(cfg, data, Accelerator(cpu=True))
    # A row's trainer state is kept at every evaluation, so a row cut by the end of a session goes on from there.
    work = work_dir(args, name, seed)
    curve, t_train, start = ([], 0.0, 1) if args.fresh else resume(trainer, work, settings)
    for step in range(start, cfg.steps + 1):
        t = time.perf_counter()
        losses = trainer.step(step)
        t_train += time.perf_counter() - t
        if step % args.eval_every == 0 or step == cfg.steps:
            ae = copy.deepcopy(trainer.acc.unwrap_model(trainer.model))
            boot = args.bootstrap if step == cfg.steps else 0
            model = Sketch2Image(ae, tom=args.tom_model)
            metrics = METRICS if args.tom_model is not None else [m for m in METRICS if m not in NEED_TOM]
            report = evaluate(model, *held, metrics, refine=False, seed=args.seed, progress=False, bootstrap=boot)
            row = {"step": step, "train_s": round(t_train, 1), "losses": losses}
            row.update({k: v["value"] for k, v in report["metrics"].items()})
            row.update({f"{k}_bootstrap_std": v["bootstrap_std"] for k, v in report["metrics"].items()
                        if "bootstrap_std" in v})  # fmt: skip
            if trainer.uses_classes:  # the head's accuracy over the current round's last 20 batches
                row["cls_acc"] = sum(trainer.round_acc[-20:]) / max(1, len(trainer.round_acc[-20:]))
                row["cls_chance"] = 1 / trainer.k
            if "probe_acc" in losses:  # how well the content alone names the class (chance 1/k)
                row["probe_acc"] = losses["probe_acc"]
            curve.append(row)
            print(f"  {name} step {step}: FID {row['fid']:.2f}, perceptual {row['vgg_perceptual']:.4f}, "
                  f"follow {row['style_follow']:.4f}, sensitivity {row['style_sensitivity']:.4f}, "
                  f"leak {row.get('content_leak', float('nan')):.4f}", flush=True)  # fmt: skip
            # The checkpoint first: progress.json names only a complete one. The last one stays for a longer budget.
            save_checkpoint(work, step, *trainer.state(), keep=2)
            atomic_write_json(work / "progress.json",
                              {"settings": settings, "step": step, "curve": curve, "train_s": t_train})  # fmt: skip
    trainer.feed.close()
    model = Sketch2Image(copy.deepcopy(trainer.acc.unwrap_model(trainer.model)))
    # Beside the work folders, not in results/: the pictures show the held-out images, which may be research-only.
    grids = Path(args.work) / "grids"
    grids.mkdir(parents=True, exist_ok=True)
    sample_grid(model, held, grids / f"{args.name}__{name}__s{seed}.png", args.seed)
    return {
        "variant": name,
        "seed": seed,
        "table": VARIANTS[name][0],
        "label": VARIANTS[name][2],
        "config": overrides,
        "params": sum(trainer.acc.unwrap_model(trainer.model).parameter_counts().values()),
        "s_per_step": round(t_train / cfg.steps, 3),
        "curve": curve,
        "n_test": len(held[0]),
    }


def sample_grid(model: Sketch2Image, held: tuple[torch.Tensor, torch.Tensor], path: Path, seed: int = 0,
                n: int = 8) -> Path:  # fmt: skip
    """What a row's final model paints, to look at beside its numbers: rows are the held-out sketches, their
    own images, the model's reconstruction (own image as style), then a mismatched style image (the
    evaluation's derangement) and the model's output in it. The same held-out pairs for every row."""
    x, s = held
    pick = torch.linspace(0, len(x) - 1, n).long()
    other = derangement(len(x), seed)[pick]
    with torch.inference_mode():
        own = model.decode(s[pick], model.style_vectors(x[pick]), refine=False)
        swapped = model.decode(s[pick], model.style_vectors(x[other]), refine=False)
    return save_grid(path, [s[pick], x[pick], own, x[other], swapped])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in _by_variant(results).items():
        steps = [c["step"] for c in runs[0]["curve"]]
        style = "-" if runs[0]["table"] in ("losses", "all") else "--"
        for ax, key in zip(axes, ("fid", "vgg_perceptual"), strict=True):
            vals = torch.tensor([[c[key] for c in r["curve"]] for r in runs])
            (line,) = ax.plot(steps, vals.mean(0), style, marker="o", ms=3, label=f"{name} ({len(runs)} seeds)")
            if len(runs) > 1:
                ax.fill_between(steps, vals.min(0).values, vals.max(0).values, color=line.get_color(), alpha=0.15)
    axes[0].set(title="FID (held-out, mismatched styles)", xlabel="training step", ylabel="FID (lower is better)")
    axes[1].set(title="VGG perceptual distance (paired recon.)", xlabel="training step", ylabel="lower is better")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_variant(results: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results:
        out.setdefault(r["variant"], []).append(r)
    return out


def table(results: list[dict], header: str) -> str:
    """Final values: the mean over seeds; ``±`` the half-range between seeds; ``[b …]`` the mean bootstrap
    spread of FID / KID over the held-out set."""
    cols = " | ".join(h for _, h, _ in TABLE)
    lines = [header, "", f"| table | variant | seeds | {cols} | s/step |", "|---" * (len(TABLE) + 4) + "|"]
    for runs in _by_variant(results).values():
        cells = []
        for key, _, digits in TABLE:
            vals = [r["curve"][-1][key] for r in runs if key in r["curve"][-1]]
            if not vals:
                cells.append("–")
                continue
            cell = f"{sum(vals) / len(vals):.{digits}f}"
            if len(vals) > 1:
                cell += f" ± {(max(vals) - min(vals)) / 2:.{digits}f}"
            boot = [r["curve"][-1][f"{key}_bootstrap_std"] for r in runs if f"{key}_bootstrap_std" in r["curve"][-1]]
            if boot:
                cell += f" [b {sum(boot) / len(boot):.{digits}f}]"
            cells.append(cell)
        s_step = sum(r["s_per_step"] for r in runs) / len(runs)
        lines.append(f"| {runs[0]['table']} | {runs[0]['label']} | {len(runs)} | {' | '.join(cells)} | {s_step:.2f} |")
    return "\n".join(lines) + "\n"


VERDICT = [("fid", "FID", 1), ("vgg_perceptual", "VGG perceptual", 3), ("content_leak", "content leak", 4),
           ("style_follow", "style follow", 3)]  # fmt: skip


def verdicts(results: list[dict]) -> str:
    """Each variant against the first row (the reference) at the last step: the difference of the means
    over seeds, and whether it counts, i.e. exceeds twice the spread between seeds (the larger range of
    final values over the seeds of the two rows). Needs two seeds of both rows."""
    rows = list(_by_variant(results).values())
    if len(rows) < 2 or len(rows[0]) < 2:
        return ""
    ref = rows[0]
    lines = [f"Against {ref[0]['label']} (Δ of the means; counts if |Δ| > 2 × the larger seed range):", ""]
    for runs in rows[1:]:
        if len(runs) < 2:
            continue
        cells = []
        for key, name, digits in VERDICT:
            a, b = ([r["curve"][-1][key] for r in rr] for rr in (ref, runs))
            delta = sum(b) / len(b) - sum(a) / len(a)
            spread = max(max(a) - min(a), max(b) - min(b))
            mark = "counts" if abs(delta) > 2 * spread else "within seeds"
            cells.append(f"{name} {delta:+.{digits}f} (seed range {spread:.{digits}f}: {mark})")
        lines.append(f"- {runs[0]['label']}: " + "; ".join(cells))
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", help="TOM sketch manifest of the training images")
    ap.add_argument("--data", help="data folder with the held-out split (or --images and --sketches)")
    ap.add_argument("--images", help="held-out images (e.g. a quality.py work folder's data/images/test)")
    ap.add_argument("--sketches", help="their sketches, same relative names (e.g. its test_sketches/s00)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cls-k", type=int, default=256)
    ap.add_argument("--cls-every", type=int, default=0, help="steps per classification round (0: from cls_views)")
    ap.add_argument("--eval-limit", type=int, default=None, help="only the first N held-out pairs")
    ap.add_argument("--seed", type=int, default=0, help="the evaluation's seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds; the table averages them")
    ap.add_argument("--bootstrap", type=int, default=0, help="resamples of the held-out set for FID/KID spread")
    ap.add_argument("--name", default="ablation", help="results/<name>.{json,md,png}")
    ap.add_argument("--arch", choices=["lean", "classic"], default="lean", help="AE layout (recorded: classic)")
    ap.add_argument("--fresh", action="store_true", help="ignore stored variant results and interrupted rows")
    ap.add_argument("--work", default="runs/ablation_work", help="rows' trainer states (resumed, extended)")
    ap.add_argument("--tom", help="TOM run folder (quality.py's W/tom): Skt-Rec and content leak need it")
    ap.add_argument(
        "--from-parts",
        metavar="DATA",
        help="only rebuild --name's table from its stored rows on "
        "this data fingerprint (its first 8 hex digits or more); nothing is trained",
    )
    args = ap.parse_args()
    if args.from_parts:
        return gather(args.name, args.from_parts)
    if not args.manifest:
        sys.exit("give --manifest (or --from-parts DATA to rebuild a table from its stored rows)")
    args.tom_model = TOMSketcher.from_pretrained(args.tom) if args.tom else None
    if args.eval_every < 1 or args.steps < 1:
        sys.exit(f"--steps {args.steps} and --eval-every {args.eval_every} must be >= 1")
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    machine = setup()
    settings = {k: getattr(args, k) for k in ("size", "steps", "eval_every", "batch_size", "cls_k", "cls_every",
                                              "eval_limit", "seed", "arch", "bootstrap")}  # fmt: skip
    tom = fingerprint(*(t.cpu() for t in args.tom_model.state_dict().values())) if args.tom_model else None
    settings["protocol"], settings["tom_sha256"] = PROTOCOL, tom
    data = PairedData.from_files(PairedFiles.from_manifest(args.manifest, args.size))  # hashed whole below
    if args.images and args.sketches:
        images, sketches = Path(args.images), Path(args.sketches)
    elif args.data:
        images, sketches = held_out_dirs(args.data)
    else:
        sys.exit("give --data, or --images and --sketches")
    _, x, s = load_held_out(images, sketches, args.size, args.eval_limit)
    settings["data_sha256"] = fingerprint(data.images, data.sketches, x, s)
    print(f"ablation: {len(data)} training images x {data.k} sketches, {len(x)} held-out pairs, {settings}")
    PARTS.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        for seed in args.seeds:
            part = part_path(args.name, name, seed, settings)
            if part.is_file() and not args.fresh:
                stored = json.loads(part.read_text())
                if stored.get("settings") == settings:
                    results.append(stored["result"])
                    print(f"{name} seed {seed}: stored result reused")
                    continue
            print(f"{name} seed {seed}: {VARIANTS[name][2]}", flush=True)
            res = run_variant(name, args, data, (x, s), seed, settings)
            row = {"settings": settings, "machine": machine, "n_train": len(data), "result": res}
            part.write_text(json.dumps(row, indent=2) + "\n")
            results.append(res)
    command = f"{ENV} .venv/bin/python benchmarks/ablation.py " + " ".join(sys.argv[1:])  # wherever it ran from
    write_tables(args.name, command, machine, settings, len(data), results)


def write_tables(name: str, command: str, machine: dict, settings: dict, n_train: int, results: list[dict]) -> None:
    """results/<name>.{json,md,png} from finished rows (all of one data set and one set of settings)."""
    out = Path(__file__).parent / "results"
    n_test = results[0]["n_test"]
    seeds = sorted({r["seed"] for r in results})
    payload = {"command": command, "machine": machine, "settings": settings, "n_train": n_train,
               "n_test": n_test, "metrics": METRICS, "results": results}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    header = (
        f"# {name} (auto-encoder output, {settings['steps']} steps each, batch {settings['batch_size']}, "
        f"{settings['size']} px; {n_train} training images; held-out {n_test} images, FID/KID on {n_test} "
        f"generated vs {n_test} real; seeds {seeds}; data {settings['data_sha256'][:8]})"
    )
    verdict = verdicts(results)
    (out / f"{name}.md").write_text(table(results, header) + (f"\n{verdict}" if verdict else ""))
    plot(results, out / f"{name}.png")
    print((out / f"{name}.md").read_text())


def gather(name: str, data: str) -> None:
    """Rebuild a table from its stored rows alone (no data, no training): every part of ``name`` whose data
    fingerprint starts with ``data``, in variant order, then seed order. Rows of other settings are refused."""
    rows = [(p, json.loads(p.read_text())) for p in sorted(PARTS.glob(f"{name}__*__s*__{data[:8]}.json"))]
    rows = [(p, d) for p, d in rows if d["settings"]["data_sha256"].startswith(data)]
    if not rows:
        sys.exit(f"no stored rows of {name} on data {data} in {PARTS}")
    parts, stored = [p for p, _ in rows], [d for _, d in rows]
    settings = stored[0]["settings"]
    odd = [p.name for p, d in rows if d["settings"] != settings]
    if odd:
        sys.exit(f"rows made with other settings than {parts[0].name}: {odd}")
    order = list(VARIANTS)
    stored.sort(key=lambda d: (order.index(d["result"]["variant"]), d["result"]["seed"]))
    results = [d["result"] for d in stored]
    command = f"{ENV} .venv/bin/python benchmarks/ablation.py --name {name} --from-parts {data[:8]}"
    print(f"{name}: {len(parts)} stored rows of data {data[:8]}: " + ", ".join(p.name for p in parts))
    write_tables(name, command, stored[0]["machine"], settings, stored[0]["n_train"], results)


if __name__ == "__main__":
    main()
