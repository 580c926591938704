"""Unified per-stage speed: training iterations/s and inference images/s of every stage, across
resolutions and batch sizes, on CPU or CUDA, in fp32 or mixed precision.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 .venv/bin/python benchmarks/speed.py
    .venv/bin/python benchmarks/speed.py --stages ae-train gan-train --sizes 128 --batches 8
    .venv/bin/python benchmarks/speed.py --device cuda --precision bf16 --tag h100_bf16
    .venv/bin/python benchmarks/speed.py --quick --tag smoke      # tiny grid, a smoke check only

Stages (``--stages``; ``train``, ``infer`` and ``all`` select groups):

- ``tom-train``: one TOM step (VGG content features, G, VGG on the sketch, Gram D step, G step).
- ``ae-train``: one full paper-faithful AE step (augmentation, both encoders, decoder, all five losses,
  backward, Adam on the model and the classifier head).
- ``gan-train``: one refiner step (frozen AE forward, D step, G2 step, EMA update).
- ``tom-sketch``: VGG + one TOM snapshot generator (``--snapshots`` for more), images/s.
- ``ae-infer``: the auto-encoder, sketch + style image -> image, images/s.
- ``refine-infer``: auto-encoder + refiner G2 (the full pipeline's ``generate``), images/s.

Default grid: training at 64/128/256 px with batch 4 and 8, inference at 128/256/512 px with batch 1
(latency) and 8 (throughput); ``--sizes``/``--batches`` replace both grids. Each configuration runs
in its own subprocess so its peak RSS (and peak CUDA memory) is its own. The protocol is
../shared/BENCHMARKING.md via ``common``: 2 threads, glibc allocator settings (set for the
children when the environment lacks them), one untimed step, 2 warm-ups, median/min/max of 7
training or 15 inference iterations, FLOPs from torch's FlopCounterMode, and ``of_mm``: the
achieved GFLOP/s as a fraction of a plain 4096² fp32 ``torch.mm`` measured at the end of the run.
Inputs are synthetic tensors of the stated shapes; TOM uses the real pretrained VGG-19 (most of its cost). Training
mixed precision goes through Accelerate (the trainers' own path), inference through
``torch.autocast``. Results: ``results/speed.json`` + ``speed.md`` (``speed_<tag>`` with ``--tag``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import torch
from common import finish_rows, flops, matmul_gflops, peak_rss_mb, setup, timed, write

TRAIN_STAGES = ["tom-train", "ae-train", "gan-train"]
INFER_STAGES = ["tom-sketch", "ae-infer", "refine-infer"]
GROUPS = {"train": TRAIN_STAGES, "infer": INFER_STAGES, "all": TRAIN_STAGES + INFER_STAGES}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
AE_SIZES = (64, 128, 256, 512, 1024)  # AEConfig presets; the AE and the refiner only exist at these sizes
N_IMAGES, K_SKETCHES, N_REAL_SKETCHES = 64, 4, 20  # synthetic dataset sizes (stated in every row)
COLUMNS = [
    "stage",
    "size",
    "batch",
    "width",
    "precision",
    "median_s",
    "range_s",
    "it_per_s",
    "unit",
    "gflop_per_it",
    "gflop_per_s",
    "of_mm",
    "params",
    "d_params",
    "peak_rss_mb",
]


def stepper(trainer, batch_source=None) -> Callable[[], None]:
    """One training iteration per call, with the 1-based step number the trainers expect (TOM takes its
    batch; the AE and GAN trainers read theirs from their data feed)."""
    step = [0]

    def fn() -> None:
        step[0] += 1
        if batch_source is None:
            trainer.step(step[0])
        else:
            trainer.step(batch_source, step[0])

    return fn


def overrides(cfg, sets: list[str] | None, stage: str):
    """``--set KEY=VALUE`` where the config has the field, ``--set STAGE.KEY=VALUE`` (tom/ae/gan) for one stage."""
    from dataclasses import fields

    from sketch2image.configs import apply_overrides

    names = {f.name for f in fields(cfg)}
    mine = []
    for kv in sets or []:
        key = kv.split("=", 1)[0]
        scope, _, field = key.rpartition(".")
        if field in names and scope in ("", stage):
            mine.append(kv[len(scope) + 1 :] if scope else kv)
    return apply_overrides(cfg, mine)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def paired_data(size: int):
    """Random uint8 images and K sketches per image, in memory: the networks' speed without the data reader."""
    from sketch2image.data.paired import PairedData

    return PairedData(
        [str(i) for i in range(N_IMAGES)],
        torch.randint(0, 256, (N_IMAGES, 3, size, size), dtype=torch.uint8),
        torch.randint(0, 256, (N_IMAGES, K_SKETCHES, size, size), dtype=torch.uint8),
    )


def accelerator(device: str, precision: str):
    """The Accelerator the trainers are built with, so mixed precision follows their real code path."""
    from sketch2image.train.common import make_accelerator

    return make_accelerator(ACCELERATE_PRECISION[precision], cpu=device == "cpu")


def build(
    stage: str, size: int, batch: int, device: str, precision: str, snapshots: int, sets: list[str] | None = None
) -> dict:
    """The function one iteration calls, and what to report about it (params, width, input shapes)."""
    from sketch2image.configs import AEConfig, GANConfig, TOMConfig
    from sketch2image.nets.autoencoder import SketchAutoEncoder
    from sketch2image.nets.refiner import Refiner
    from sketch2image.options import LOSSES

    mp = ACCELERATE_PRECISION[precision]
    if stage in ("tom-train", "tom-sketch"):
        from sketch2image.nets.tom import SketchGenerator
        from sketch2image.nets.vgg import load_vgg

        cfg = overrides(replace(TOMConfig(), size=size, batch_size=batch, mixed_precision=mp), sets, "tom")
        vgg = load_vgg(cfg.vgg).to(device)
        images = torch.rand(batch, 3, size, size, device=device)
        width = f"G {cfg.g_width}-{cfg.g_max_width}"
        if stage == "tom-train":
            from sketch2image.train.tom import SketchStats, TOMTrainer, stroke_variants

            real = (torch.rand(N_REAL_SKETCHES, 1, size, size) > 0.05).float()
            stats = SketchStats.compute(vgg, stroke_variants(real, cfg.stroke_variants), cfg)
            stats.mean, stats.std = stats.mean.to(device), stats.std.to(device)
            stats.grams = {k: v.to(device) for k, v in stats.grams.items()}
            trainer = TOMTrainer(cfg, vgg, stats, accelerator(device, precision))
            fn = stepper(trainer, images)
            g, d = n_params(trainer.g), n_params(trainer.d)
            return {
                "fn": fn,
                "params": g,
                "d_params": d,
                "params_detail": {"G": g, "D": d, "VGG (frozen)": n_params(vgg)},
                "width": width,
                "shapes": f"images ({batch},3,{size},{size}); {N_REAL_SKETCHES} real sketches x "
                f"{len(set(stats.variant))} stroke variants",
            }
        from sketch2image.sketcher import TOMSketcher

        gens = [SketchGenerator(cfg.feature_layer, cfg.g_width, cfg.g_max_width) for _ in range(snapshots)]
        sk = TOMSketcher(cfg, gens, [f"g{i}" for i in range(snapshots)], vgg).to(device)
        g = n_params(sk.generators)
        return {
            "fn": lambda: sk(images),
            "params": g,
            "params_detail": {f"G x{snapshots}": g, "VGG (frozen)": n_params(vgg)},
            "width": width,
            "shapes": f"images ({batch},3,{size},{size}) -> sketches ({batch},{snapshots},{size},{size})",
            "infer": True,
        }

    # The paper's loss set, as the stored results: the dearer one (a second, classification batch per step).
    acfg = AEConfig.preset(size, batch_size=max(batch, 2), cls_k=N_IMAGES, mixed_precision=mp, **LOSSES["paper"])
    acfg = overrides(acfg, sets, "ae")
    if stage == "ae-train":
        from sketch2image.train.ae import AETrainer

        data = paired_data(size)
        trainer = AETrainer(acfg, data, accelerator(device, precision))
        fn = stepper(trainer)
        counts = trainer.acc.unwrap_model(trainer.model).parameter_counts()
        return {
            "fn": fn,
            "params": sum(counts.values()),
            "params_detail": {**counts, "cls head": n_params(trainer.head)},
            "width": f"{acfg.width}-{acfg.max_width}",
            "shapes": f"images ({batch},3,{size},{size}), sketches ({batch},{K_SKETCHES},1,{size},{size}) "
            f"from {N_IMAGES} uint8 pairs",
        }
    gcfg = overrides(GANConfig(batch_size=batch, mixed_precision=mp), sets, "gan").for_size(size)
    ae = SketchAutoEncoder(acfg.model_config()).to(device).eval().requires_grad_(False)
    if stage == "gan-train":
        from sketch2image.train.gan import GANTrainer

        data = paired_data(size)
        trainer = GANTrainer(gcfg, ae, data, accelerator(device, precision))
        fn = stepper(trainer)
        g, d = n_params(trainer.g_ema), n_params(trainer.d)
        return {
            "fn": fn,
            "params": g,
            "d_params": d,
            "params_detail": {"G2": g, "D": d, "AE (frozen)": n_params(ae)},
            "width": f"G2 {gcfg.width}-{gcfg.max_width}, D {gcfg.d_width}, AE {acfg.width}",
            "shapes": f"images ({batch},3,{size},{size}), sketches ({batch},{K_SKETCHES},1,{size},{size}) "
            f"from {N_IMAGES} uint8 pairs",
        }
    sketch = torch.rand(batch, 1, size, size, device=device)
    style = torch.rand(batch, 3, size, size, device=device)
    shapes = f"sketch ({batch},1,{size},{size}), style ({batch},3,{size},{size})"
    if stage == "ae-infer":
        return {
            "fn": lambda: ae(sketch, style),
            "params": n_params(ae),
            "params_detail": ae.parameter_counts(),
            "width": f"{acfg.width}-{acfg.max_width}",
            "shapes": shapes,
            "infer": True,
        }
    refiner = Refiner(gcfg.model_config(size, acfg.style_dim)).to(device).eval().requires_grad_(False)

    def refine() -> torch.Tensor:
        res = ae(sketch, style, features=True)
        return refiner(res["out"], res["f_style"])

    return {
        "fn": refine,
        "params": n_params(ae) + n_params(refiner),
        "params_detail": {**ae.parameter_counts(), "G2": n_params(refiner)},
        "width": f"AE {acfg.width}-{acfg.max_width} + G2 {gcfg.width}-{gcfg.max_width}",
        "shapes": shapes,
        "infer": True,
    }


def one(cfg: dict) -> dict:
    """Measure one configuration (run in a fresh process, so peak memory is this configuration's)."""
    info = setup(cfg["threads"])
    device, precision = cfg["device"], cfg["precision"]
    torch.manual_seed(0)
    b = build(cfg["stage"], cfg["size"], cfg["batch"], device, precision, cfg["snapshots"], cfg.get("sets"))
    infer = b.get("infer", False)
    cuda = device == "cuda"
    autocast = (
        (lambda: torch.autocast(device_type=device, dtype=DTYPES[precision]))
        if infer and precision in DTYPES
        else contextlib.nullcontext
    )
    grad = torch.inference_mode if infer else contextlib.nullcontext
    body = b["fn"]

    def fn() -> None:
        with grad(), autocast():
            body()
        if cuda:  # kernels run asynchronously: an iteration ends when the GPU is done
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = timed(fn, cfg["infer_iters"] if infer else cfg["iters"], cfg.get("warmup", 2))
    row = {
        "stage": cfg["label"],
        "size": cfg["size"],
        "batch": cfg["batch"],
        "width": b["width"],
        "precision": precision,
        "device": device,
        **t,
        "items": cfg["batch"] if infer else 1,
        "unit": "img/s" if infer else "it/s",
        "params": b["params"],
        "d_params": b.get("d_params", "-"),
        "params_detail": b["params_detail"],
        "shapes": b["shapes"],
        # peak memory of the timed loop, before FLOP counting runs one more iteration
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "machine": info,
    }
    row["flops"] = flops(fn)
    return row


def label(stage: str, snapshots: int) -> str:
    names = {
        "tom-train": "TOM train",
        "ae-train": "AE train",
        "gan-train": "GAN train (D+G)",
        "tom-sketch": f"TOM sketch ({snapshots} snapshot{'s' if snapshots > 1 else ''})",
        "ae-infer": "AE infer",
        "refine-infer": "AE+refiner infer",
    }
    return names[stage]


def grid(args: argparse.Namespace) -> list[dict]:
    """Every (stage, size, batch) to run, skipping combinations the models cannot be built at."""
    stages: list[str] = []
    for s in args.stages:
        stages += [x for x in GROUPS.get(s, [s]) if x not in stages]
    configs = []
    for stage in stages:
        infer = stage in INFER_STAGES
        sizes = args.sizes or ([64] if args.quick else [128, 256, 512] if infer else [64, 128, 256])
        batches = args.batches or ([2] if args.quick else [1, 8] if infer else [4, 8])
        for size in sizes:
            for batch in batches:
                why = None
                if stage.startswith("tom") and (size < 16 or size % 16):
                    why = "TOM needs a multiple of 16"
                elif not stage.startswith("tom") and size not in AE_SIZES:
                    why = f"the AE has presets only at {list(AE_SIZES)}"
                elif stage == "ae-train" and batch < 2:
                    why = "AE training needs batch >= 2 (triplets)"
                if why:
                    print(f"skip {stage} {size}px batch {batch}: {why}", flush=True)
                    continue
                configs.append(
                    {
                        "stage": stage,
                        "label": label(stage, args.snapshots),
                        "size": size,
                        "batch": batch,
                        "device": args.device,
                        "precision": args.precision,
                        "threads": args.threads,
                        "iters": args.iters,
                        "infer_iters": args.infer_iters,
                        "snapshots": args.snapshots,
                        "warmup": args.warmup,
                        "sets": args.set or [],
                    }
                )
    return configs


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=["all"], choices=[*GROUPS, *TRAIN_STAGES, *INFER_STAGES])
    ap.add_argument("--sizes", type=int, nargs="+", help="replace the default size grid of every stage")
    ap.add_argument("--batches", type=int, nargs="+", help="replace the default batch grid of every stage")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the protocol: 2)")
    ap.add_argument("--iters", type=int, default=7, help="timed training iterations (protocol: >= 7)")
    ap.add_argument("--infer-iters", type=int, default=15, help="timed inference iterations (protocol: >= 15)")
    ap.add_argument("--snapshots", type=int, default=1, help="TOM generators in tom-sketch")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up iterations after the untimed one (protocol: 2)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a field of every stage that has it (grad_checkpoint=true), of one: ae.width=48")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke check: 64 px, batch 2, 3 iterations")
    ap.add_argument("--tag", help="write results/speed_<tag>.{json,md} (--quick alone writes speed_quick)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration as JSON
    args = ap.parse_args()
    if args.quick:
        args.iters = args.infer_iters = 3
    if args.device == "cpu" and args.precision == "fp16":
        ap.error("fp16 needs --device cuda (CPU mixed precision is bf16)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")
    return args


def run_child(cfg: dict, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"exit {out.returncode}:\n    " + "\n    ".join(tail))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    env = dict(os.environ)
    for k, v in ALLOCATOR_ENV.items():
        env.setdefault(k, v)  # the protocol's glibc settings, unless the caller chose others
    print("allocator:", {k: env.get(k) for k in (*ALLOCATOR_ENV, "LD_PRELOAD")}, flush=True)
    print(f"device {args.device}, precision {args.precision}, threads {args.threads}", flush=True)
    configs = grid(args)
    rows: list[dict] = []
    failed: list[dict] = []
    machine: dict | None = None
    for cfg in configs:
        try:
            r = run_child(cfg, env)
        except RuntimeError as e:
            print(f"FAILED {cfg['label']} {cfg['size']}px batch {cfg['batch']}: {e}", flush=True)
            failed.append({**cfg, "error": str(e)})
            continue
        machine = r.pop("machine")
        rate = r["items"] / r["median_s"]
        print(
            f"{r['stage']:<26} {r['size']:>4}px batch {r['batch']:<3} {r['precision']} width {r['width']:<30} "
            f"params {r['params']:>11,} d_params {r['d_params']!s:>9}  {r['median_s']:.4f}s  {rate:.2f} {r['unit']}"
            f"  [{r['shapes']}]",
            flush=True,
        )
        rows.append(r)
    if not rows:
        sys.exit("no configuration ran")
    finish_rows(rows)
    torch.set_num_threads(args.threads)
    mm = matmul_gflops(args.device)  # measured now, on the same machine state as the rows
    print(f"fp32 torch.mm 4096²: {mm:.1f} GFLOP/s", flush=True)
    for r in rows:
        r["of_mm"] = f"{r['gflop_per_s'] / mm:.0%}"
    columns = list(COLUMNS)
    if args.device == "cuda":
        columns += ["peak_cuda_mb"]
    name = "speed" + (f"_{args.tag}" if args.tag else "_quick" if args.quick else "")
    results = {
        "machine": machine,
        "device": args.device,
        "precision": args.precision,
        "matmul_gflop_per_s": round(mm, 1),
        "rows": rows,
        "failed": failed,
    }
    if machine and machine.get("cuda") and args.device == "cuda":
        machine = {**machine, "cpu": f"{machine['cuda']} (host {machine['cpu']})"}
        results["machine"] = machine
    _, m = write(results, name, rows, columns)
    print(m.read_text())
    if failed:
        sys.exit(f"{len(failed)} configuration(s) failed")


if __name__ == "__main__":
    main()
