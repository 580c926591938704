"""Quality protocol: train TOM → AE → GAN under a fixed budget, then score the held-out split.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/quality.py \
        --dataset openmoji --size 64 --tom-steps 520 --ae-steps 2000 --gan-steps 1000
    .venv/bin/python benchmarks/quality.py --dataset /tmp/faces128 --name faces64 --minutes 20

``--dataset openmoji`` renders the built-in set; its held-out emojis are scored twice, with the
artists' own line art and with TOM sketches (snapshot 0) as input. ``--dataset DIR`` takes any
image folder: a seeded split (``--test-fraction``, capped by ``--test-count``) is written as
symlinks into the work folder, TOM learns from the OpenMoji line art (or ``--sketch-set``),
and the held-out images are scored through their TOM sketches. Every input is scored with the
EMA refiner and with the auto-encoder alone (``refine=False``), with all default metrics.

The step budget is exact; ``--minutes`` (or ``--tom-minutes`` …) also caps each stage's
wall-clock time (data loading included): the stage trains in resumable chunks sized from the
measured step rate and stops between chunks. TOM always runs at least to its last snapshot.
The work folder (default ``runs/quality_<name>``, git-ignored) is resumable: a finished stage
is skipped, an interrupted one continues from its last checkpoint.

Writes ``results/quality_<name>.json`` (command line, configs, budget, machine, timings per
stage, every report) and ``results/quality_<name>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import setup

from sketch2image.configs import AEConfig, GANConfig, TOMConfig, apply_overrides, to_dict
from sketch2image.data.images import scan_images
from sketch2image.data.openmoji import render_openmoji
from sketch2image.errors import S2IError
from sketch2image.metrics.evaluate import DEFAULT_METRICS, evaluate, held_out_dirs, load_held_out
from sketch2image.metrics.report import machine_description, report_markdown
from sketch2image.options import LOSSES
from sketch2image.pipeline import Sketch2Image
from sketch2image.sketcher import sketch_folder
from sketch2image.storage import atomic_write_json
from sketch2image.train import checkpoint as ckpt
from sketch2image.train.ae import train_ae
from sketch2image.train.gan import train_gan
from sketch2image.train.tom import train_tom
from sketch2image.version import __version__

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("tom", "ae", "gan")
FIRST_CHUNK = 50  # steps of a time-budgeted stage's first chunk, before its step rate is known


def tom_config(size: int, steps: int) -> TOMConfig:
    """The default TOM schedule scaled to ``steps``, so a short run still writes its snapshots."""
    base = TOMConfig()
    scale = steps / base.steps
    warmup = min(steps, max(1, round(base.warmup * scale)))
    every = max(1, round(base.snapshot_every * scale))
    k = base.snapshots
    while k > 1 and warmup + (k - 1) * every > steps:
        k -= 1
    return replace(base, size=size, steps=steps, warmup=warmup, snapshot_every=every, snapshots=k)


def build_configs(args: argparse.Namespace) -> dict:
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    cfgs = {
        "tom": replace(tom_config(args.size, args.tom_steps), seed=args.seed, **batch),
        "ae": AEConfig.preset(args.size, steps=args.ae_steps, seed=args.seed, **LOSSES[args.losses], **batch),
        "gan": GANConfig(steps=args.gan_steps, seed=args.seed, **batch),
    }
    overrides: dict[str, list[str]] = {s: [] for s in STAGES}
    for item in args.set:
        stage, _, rest = item.partition(".")
        if stage not in overrides or not rest:
            raise S2IError(f"--set {item!r} must look like STAGE.key=value with STAGE one of {', '.join(STAGES)}")
        overrides[stage].append(rest)
    return {s: apply_overrides(c, overrides[s]) if overrides[s] else c for s, c in cfgs.items()}


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"


class State:
    """``quality_state.json`` in the work folder: what was trained, for how long, and on which data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"stages": {}}

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def check_protocol(self, protocol: dict) -> None:
        """Data and split must not change under a work folder; step budgets and time may."""
        old = self.data.get("protocol")
        if old is not None and old != protocol:
            diff = sorted(k for k in protocol if old.get(k) != protocol[k])
            raise S2IError(f"{self.path.parent}: was started with different {', '.join(diff)}; use a new --work")
        self.data["protocol"] = protocol
        self.save()


def checkpoint_step(run_dir: Path) -> int:
    latest = ckpt.latest_checkpoint(run_dir)
    return int(json.loads((latest / "meta.json").read_text())["step"]) if latest is not None else 0


def step_rate(run_dir: Path, after: int) -> float | None:
    """Steps per second from the run's own log (written every ``log_every`` steps), excluding start-up."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("step", 0) > after and "time" in r]
    if len(rows) < 2 or rows[-1]["time"] <= rows[0]["time"]:
        return None
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def last_log(run_dir: Path) -> dict:
    log = run_dir / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def train_stage(
    name: str, train, cfg, run_dir: Path, minutes: float | None, later: list[Path], state: State, min_steps: int = 1
) -> dict:
    """Train ``run_dir`` to ``cfg.steps``, or until ``minutes`` of wall-clock time are spent.

    With a time budget the stage runs in chunks (``train(cfg with steps=chunk end)``, resumed
    from its checkpoint); after each chunk the next one is sized from the step rate in the
    run's log and the start-up time the chunk cost, so it ends inside the budget.
    """
    target = cfg.steps
    rec = state.data["stages"].get(name, {})
    done = checkpoint_step(run_dir)
    same_budget = rec.get("target_steps") == target and rec.get("minutes") == minutes
    if done >= target or (same_budget and rec.get("stopped") == "minutes" and rec.get("steps_done") == done):
        print(f"[{name}] finished earlier at step {done}: skipped")
        defaults = {"target_steps": target, "minutes": minutes, "seconds": 0.0, "chunks": 0, "stopped": "steps"}
        return {**defaults, **rec, "steps_done": done, "skipped": True, "final_log": last_log(run_dir)}
    if any(p.exists() for p in later):
        raise S2IError(
            f"{run_dir}: stopped at step {done} < {target}, but later stages already used it "
            f"({', '.join(str(p) for p in later if p.exists())}); use a new --work or the same budget"
        )
    rec = {**rec, "target_steps": target, "minutes": minutes, "skipped": False}
    rec.setdefault("seconds", 0.0)
    rec.setdefault("chunks", 0)
    budget = None if minutes is None else minutes * 60
    end = target if budget is None else min(target, max(done + FIRST_CHUNK, min_steps))
    while True:
        print(f"[{name}] training steps {done} -> {end} of {target}" + (f" ({minutes} min budget)" if minutes else ""))
        t0 = time.perf_counter()
        try:
            train(replace(cfg, steps=end))
        finally:
            took = time.perf_counter() - t0
            rec["seconds"] = round(rec["seconds"] + took, 2)
            rec["chunks"] += 1
            rec["steps_done"] = checkpoint_step(run_dir)
            state.data["stages"][name] = rec
            state.save()
        before, done = done, rec["steps_done"]
        if done >= target:
            rec["stopped"] = "steps"
            break
        left = budget - rec["seconds"]
        rate = step_rate(run_dir, before) or (done - before) / took
        startup = max(0.0, took - (done - before) / rate)
        n = math.floor((left - startup) * rate)
        if n < 1:
            rec["stopped"] = "minutes"
            break
        end = min(target, done + n)
    rec["final_log"] = last_log(run_dir)
    state.data["stages"][name] = rec
    state.save()
    print(f"[{name}] stopped at step {done} ({rec['stopped']}), {rec['seconds']:.0f} s in all")
    return rec


def split_folder(source: Path, data: Path, limit: int | None, fraction: float, cap: int, seed: int) -> dict:
    """A seeded train/test split of ``source`` as symlinks under ``data/images/{train,test}``.

    Written once; ids keep their relative paths, so sketches and reports pair by name.
    """
    info_path = data / "split.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    rels = [p.relative_to(source).as_posix() for p in scan_images(source)][:limit]
    if len(rels) < 4:
        raise S2IError(f"{source}: {len(rels)} images; the quality protocol needs at least 4")
    order = list(rels)
    random.Random(seed).shuffle(order)
    n_test = max(2, min(cap, round(fraction * len(rels))))
    test = set(order[:n_test])
    tmp = data.with_name(f".{data.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in rels:
        link = tmp / "images" / ("test" if rel in test else "train") / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((source / rel).resolve())
    info = {"source": str(source.resolve()), "n_train": len(rels) - n_test, "n_test": n_test, "seed": seed}
    (tmp / "split.json").write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(data)
    return info


def prepare_data(args: argparse.Namespace, work: Path, progress: bool) -> dict:
    """Paths of the training images, the real-sketch set S and the held-out split."""
    size = args.size
    if args.dataset == "openmoji":
        data = work / (f"openmoji{size}" + (f"_limit{args.limit}" if args.limit else ""))
        render_openmoji(data, size, limit=args.limit, progress=progress)
        images, lines = held_out_dirs(data)
        n_train = len(scan_images(data / "images" / "train"))
        return {
            "name": "openmoji",
            "root": str(data),
            "train": data / "images" / "train",
            "test": images,
            "real_lines": lines,
            "sketch_set": Path(args.sketch_set) if args.sketch_set else data / "sketch_set",
            "n_train": n_train,
        }
    source = Path(args.dataset)
    info = split_folder(source, work / "data", args.limit, args.test_fraction, args.test_count, args.split_seed)
    if args.sketch_set:
        sketch_set = Path(args.sketch_set)
    else:  # the artists' 60 line drawings of the full OpenMoji render
        om = work / f"openmoji{size}"
        render_openmoji(om, size, progress=progress)
        sketch_set = om / "sketch_set"
    return {
        "name": source.name,
        "root": info["source"],
        "train": work / "data" / "images" / "train",
        "test": work / "data" / "images" / "test",
        "real_lines": None,
        "sketch_set": sketch_set,
        "n_train": info["n_train"],
    }


def summary_table(evals: list[dict]) -> str:
    names = list(evals[0]["report"]["metrics"])
    lines = ["| input | output | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for e in evals:
        vals = [f"{e['report']['metrics'][n]['value']:.4g}" for n in names]
        lines.append(f"| {e['input']} | {'refined (EMA)' if e['refine'] else 'AE only'} | " + " | ".join(vals) + " |")
    better = [evals[0]["report"]["metrics"][n]["better"] for n in names]
    lines.append("| | better | " + " | ".join(better) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    m, b = result["machine"], result["budget"]
    stages = result["stages"]
    rows = [
        f"# Quality: {result['name']}",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"sketch2image {result['version']} ({result['git']}), {result['dataset']['name']} at {b['size']} px, "
        f"{result['dataset']['n_train']} training images, {result['dataset']['n_test']} held out; "
        f"{m['cpu']}{', ' + m['cuda'] if m.get('cuda') else ''}, torch {m['torch']}, {m['threads']} threads, "
        f"allocator {m['allocator']}.",
        "",
        "| stage | steps | budget | stopped by | seconds |",
        "|---|---|---|---|---|",
    ]
    for s in STAGES:
        r = stages[s]
        budget = f"{r['target_steps']} steps" + (f", {r['minutes']} min" if r.get("minutes") else "")
        rows.append(f"| {s} | {r['steps_done']} | {budget} | {r.get('stopped', '')} | {r['seconds']:.0f} |")
    for s, sec in result["timings_s"].items():
        if s not in STAGES:
            rows.append(f"| {s} | | | | {sec:.0f} |")
    rows += ["", "## Summary", "", summary_table(result["evaluations"])]
    for e in result["evaluations"]:
        rows.append(report_markdown(e["report"], e["title"]))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="'openmoji' or an image folder (searched recursively)")
    ap.add_argument("--name", help="results/quality_<name>.{json,md} (default: <dataset><size>)")
    ap.add_argument("--work", help="work folder for data, runs and the model (default: runs/quality_<name>)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tom-steps", type=int, default=TOMConfig.steps)
    ap.add_argument("--ae-steps", type=int, default=AEConfig.steps)
    ap.add_argument("--gan-steps", type=int, default=GANConfig.steps)
    ap.add_argument("--minutes", type=float, help="wall-clock cap per training stage (default: none)")
    for s in STAGES:
        ap.add_argument(f"--{s}-minutes", type=float, help=f"wall-clock cap of {s.upper()} (default: --minutes)")
    ap.add_argument("--batch-size", type=int, help="batch of all three stages (default: each config's own)")
    ap.add_argument("--losses", choices=sorted(LOSSES), default="reconstruction",
                    help="the AE's loss set, as `s2i ae train --losses` (stored faces/art results: paper)")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE", help="e.g. ae.w_perceptual=0.1")
    ap.add_argument("--limit", type=int, help="use only the first N images (a smoke run)")
    ap.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of an image folder")
    ap.add_argument("--test-count", type=int, default=1000, help="at most this many held-out images")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of an image folder's split")
    ap.add_argument("--sketch-set", help="real line drawings S for TOM (default: OpenMoji's artists' line art)")
    ap.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    progress = not args.no_progress
    info = setup(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset_name = "openmoji" if args.dataset == "openmoji" else Path(args.dataset).name
    name = args.name or f"{dataset_name}{args.size}"
    work = Path(args.work) if args.work else ROOT / "runs" / f"quality_{name}"
    work.mkdir(parents=True, exist_ok=True)
    cfgs = build_configs(args)
    minutes = {s: getattr(args, f"{s}_minutes") or args.minutes for s in STAGES}
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(command)

    state = State(work / "quality_state.json")
    protocol = {"dataset": args.dataset, "size": args.size, "limit": args.limit, "sketch_set": args.sketch_set}
    if args.dataset != "openmoji":  # an image folder's split is made here; OpenMoji's is fixed by its render
        split = {"test_fraction": args.test_fraction, "test_count": args.test_count, "split_seed": args.split_seed}
        protocol.update(dataset=str(Path(args.dataset).resolve()), **split)
    state.check_protocol(protocol)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = prepare_data(args, work, progress)
    timings["data"] = time.perf_counter() - t

    tom, sketches, test_sketches = work / "tom", work / "sketches", work / "test_sketches"
    ae, gan, model_dir = work / "ae", work / "gan", work / "model"
    manifest = sketches / "manifest.json"
    stages = {
        "tom": train_stage(
            "tom",
            lambda c: train_tom(c, data["train"], data["sketch_set"], tom, resume=True, progress=progress),
            cfgs["tom"],
            tom,
            minutes["tom"],
            [sketches, test_sketches, ae, gan],
            state,
            min_steps=cfgs["tom"].snapshot_steps()[-1],
        )
    }
    t = time.perf_counter()
    if not manifest.is_file():
        print(f"[sketch] the training images with every TOM snapshot -> {sketches}")
        sketch_folder(tom, data["train"], sketches, device=device, progress=progress)
    if not (test_sketches / "manifest.json").is_file():
        print(f"[sketch] the held-out images -> {test_sketches} (snapshot 0 is the evaluation input)")
        sketch_folder(tom, data["test"], test_sketches, device=device, progress=progress)
    timings["sketch"] = time.perf_counter() - t
    stages["ae"] = train_stage(
        "ae",
        lambda c: train_ae(c, manifest, ae, resume=True, progress=progress),
        cfgs["ae"],
        ae,
        minutes["ae"],
        [gan],
        state,
    )
    stages["gan"] = train_stage(
        "gan",
        lambda c: train_gan(c, ae, manifest, gan, resume=True, progress=progress),
        cfgs["gan"],
        gan,
        minutes["gan"],
        [],
        state,
    )

    t = time.perf_counter()
    if (model_dir / "sketch2image.json").is_file():
        shutil.rmtree(model_dir)  # re-exported every time: stages may have trained further since
    Sketch2Image.from_runs(ae, gan, tom).save_pretrained(model_dir, training_data=f"{dataset_name}, {args.size}px")
    timings["export"] = time.perf_counter() - t

    t = time.perf_counter()
    model = Sketch2Image.from_pretrained(model_dir, device=device)
    inputs = [("TOM sketches", test_sketches / "s00")]
    if data["real_lines"] is not None:
        inputs.insert(0, ("real line art", data["real_lines"]))
    evals = []
    n_test = 0
    for label, folder in inputs:
        ids, x, s = load_held_out(data["test"], folder, model.size, args.test_count)
        n_test = len(ids)
        for refine in (True, False):
            title = f"{name}: {label}, {'refined (EMA refiner)' if refine else 'auto-encoder only'}"
            print(f"[eval] {title} ({len(ids)} held-out pairs)")
            report = evaluate(
                model,
                x,
                s,
                DEFAULT_METRICS,
                refine=refine,
                seed=args.seed,
                batch_size=args.eval_batch_size,
                progress=progress,
            )
            report["images"], report["sketches"] = str(data["test"]), str(folder)
            evals.append({"input": label, "refine": refine, "title": title, "report": report})
            print(report_markdown(report, title))
    timings["eval"] = time.perf_counter() - t
    timings["total_this_invocation"] = time.perf_counter() - t_start

    result = {
        "benchmark": "quality",
        "name": name,
        "command": command,
        "argv": sys.argv,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "git": git_revision(),
        "work": str(work),
        "dataset": {
            "name": data["name"],
            "root": data["root"],
            "train": str(data["train"]),
            "test": str(data["test"]),
            "sketch_set": str(data["sketch_set"]),
            "n_train": data["n_train"],
            "n_test": n_test,
        },
        "budget": {
            "size": args.size,
            "steps": {s: cfgs[s].steps for s in STAGES},
            "minutes": minutes,
            "batch_size": {s: cfgs[s].batch_size for s in STAGES},
        },
        "configs": {s: to_dict(cfgs[s]) for s in STAGES},
        "machine": {**machine_description(), **info},
        "stages": stages,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "evaluations": evals,
    }
    RESULTS.mkdir(exist_ok=True)
    jpath, mpath = RESULTS / f"quality_{name}.json", RESULTS / f"quality_{name}.md"
    jpath.write_text(json.dumps(result, indent=2) + "\n")
    mpath.write_text(markdown(result))
    print(summary_table(evals))
    print(f"wrote {jpath} and {mpath}")


if __name__ == "__main__":
    main()
