"""``s2i``: one command, subcommands grouped by job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sketch2image.errors import S2IError
from sketch2image.options import DEFAULT_METRICS, FITS, LOSSES, MIX_MODES, STROKES
from sketch2image.version import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), like every other s2i error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _cmd_data_openmoji(args: argparse.Namespace) -> None:
    from sketch2image.data.openmoji import render_openmoji

    manifest = render_openmoji(args.out, args.size, n_sketches=args.sketches, test_fraction=args.test_fraction,
                               seed=args.seed, limit=args.limit, workers=args.workers)  # fmt: skip
    print(f"OpenMoji rendered at {args.size}px: {manifest}")


def _cmd_weights_vgg(args: argparse.Namespace) -> None:
    from sketch2image.nets.vgg import vgg_subset_tensors
    from sketch2image.storage import save_tensors

    tensors, meta = vgg_subset_tensors(args.upto)
    save_tensors(tensors, Path(args.out), meta)
    size = Path(args.out).stat().st_size
    print(f"VGG-19 layers up to {args.upto}: {args.out} ({size / 1e6:.1f} MB); use it with --set vgg={args.out}")


def _config(args: argparse.Namespace, base, adjust=None):
    """The stage config: ``base``, changed by ``adjust`` (the command's own coarse options), then every
    ``--set KEY=VALUE`` and then the named options applied.

    Resuming, the base is the run's own saved config, so a run started under other defaults goes on as
    it was started; options given now still apply and are checked against it (`prepare_run_dir`)."""
    from sketch2image.configs import apply_overrides
    from sketch2image.storage import load_config

    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        base = load_config(type(base), saved)
    if adjust is not None:
        base = adjust(base)

    sets = [
        f"{key}={getattr(args, key)}"
        for key in ("size", "steps", "batch_size", "snapshots", "seed")
        if getattr(args, key, None) is not None
    ]
    return apply_overrides(base, list(args.set or []) + sets)  # named options win, as before


def _cmd_tom_train(args: argparse.Namespace) -> None:
    from sketch2image.configs import TOMConfig
    from sketch2image.train.tom import train_tom

    run = train_tom(
        _config(args, TOMConfig()), Path(args.images), Path(args.sketches), Path(args.out), resume=args.resume
    )
    print(f"TOM run: {run} (snapshots in {run / 'snapshots'}, samples in {run / 'samples'})")


def _cmd_tom_sketch(args: argparse.Namespace) -> None:
    from sketch2image.sketcher import sketch_folder

    manifest = sketch_folder(Path(args.run), Path(args.images), Path(args.out), size=args.size,
                             batch_size=args.batch_size, threshold=args.binarize, device=args.device,
                             ink_check=not args.no_ink_check, num_workers=_workers(args.workers))  # fmt: skip
    print(f"sketches and manifest: {manifest}")


def _cmd_ae_train(args: argparse.Namespace) -> None:
    import dataclasses

    from sketch2image.configs import AE_PRESETS, AEConfig
    from sketch2image.data.paired import manifest_size
    from sketch2image.train.ae import train_ae

    if args.preset is not None:  # applied by adjust, on a resumed run's own config too
        base = AEConfig()
    else:  # the size the sketches were drawn at, with its preset's widths where there is one
        size = manifest_size(Path(args.data)) or 64
        base = AEConfig.preset(size) if size in AE_PRESETS else AEConfig(size=size)

    def adjust(cfg: AEConfig) -> AEConfig:  # --preset and --losses, before --set (which may refine a weight)
        cfg = cfg.with_size(args.preset) if args.preset is not None else cfg
        return dataclasses.replace(cfg, **LOSSES[args.losses]) if args.losses is not None else cfg

    run = train_ae(_config(args, base, adjust), Path(args.data), Path(args.out), resume=args.resume)
    print(f"AE run: {run} (model in {run / 'model'}, samples in {run / 'samples'})")


def _cmd_gan_train(args: argparse.Namespace) -> None:
    from sketch2image.configs import GANConfig
    from sketch2image.train.gan import train_gan

    run = train_gan(_config(args, GANConfig()), Path(args.ae), Path(args.data), Path(args.out), resume=args.resume)
    print(f"GAN run: {run} (EMA refiner in {run / 'model'}, samples in {run / 'samples'})")


def _save_images(images, paths: list[Path]) -> None:
    """Write every output atomically (temp name, then rename): an interrupted run leaves no half file."""
    from sketch2image.processing import to_pil
    from sketch2image.storage import save_image

    for img, path in zip(to_pil(images), paths, strict=True):
        save_image(img, path)


def _inputs(path: str) -> tuple[list[Path], list[str]]:
    """A file → [file]; a folder → its images (recursive) with their stable ids."""
    from sketch2image.data.images import scan_images
    from sketch2image.errors import InputError

    p = Path(path)
    if p.is_dir():
        files = scan_images(p)
        return files, [f.relative_to(p).with_suffix("").as_posix() for f in files]
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    return [p], [p.stem]


def _out_is_file(out: str) -> bool:
    return Path(out).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _writer(out: str, n: int, what: str = "outputs"):
    """``write(images, name)`` for a batch command's ``n`` outputs: ``out`` itself when it names one image file,
    else ``out/<name>.png``; a file name for several outputs is refused before anything is computed."""
    from sketch2image.errors import InputError

    single = _out_is_file(out)
    if n > 1 and single:
        raise InputError(f"{out}: {n} {what} need a folder, not a file name")

    def write(images, name: str) -> None:
        _save_images(images, [Path(out) if single else Path(out) / f"{name}.png"])

    return write


def _summary(written: int, out: str, skipped: list[str], total: int) -> int:
    """The last line of a batch job, and its exit code: 1 when inputs were skipped (so scripts notice)."""
    if skipped:
        print(f"wrote {written} image(s) to {out}; skipped {len(skipped)} of {total} input file(s) "
              f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}: see the warnings above)")  # fmt: skip
        return 1
    print(f"wrote {written} image(s) to {out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from sketch2image.errors import InputError
    from sketch2image.pipeline import Sketch2Image

    model = Sketch2Image.from_pretrained(args.model, args.device, noise=args.noise)
    sketches, sketch_ids = _inputs(args.sketch)
    styles, style_ids = _inputs(args.style)
    if args.pair_by_name:
        common = sorted(set(sketch_ids) & set(style_ids))
        if not common:
            raise InputError(f"{args.sketch} and {args.style}: no names in common to pair")
        pairs = [(sketch_ids.index(i), style_ids.index(i), i) for i in common]
    else:
        pairs = [
            (a, b, f"{sa}__{sb}" if len(sketches) > 1 and len(styles) > 1 else (sa if len(styles) == 1 else sb))
            for a, sa in enumerate(sketch_ids)
            for b, sb in enumerate(style_ids)
        ]
    write = _writer(args.out, len(pairs))
    # Every input is normalised before anything is written: a single bad file stops the run with no
    # output; in a folder, a bad file is skipped (one line each) and the rest are written.
    sk_t, shapes = model.processor.sketches(sketches, "raise" if len(sketches) == 1 else "skip", args.stroke)
    st_t = model.processor.styles(styles, "raise" if len(styles) == 1 else "skip")
    skipped = [str(f) for f, t in [*zip(sketches, sk_t, strict=True), *zip(styles, st_t, strict=True)] if t is None]
    written = 0
    made = model.generate_pairs(sk_t, st_t, [(a, b) for a, b, _ in pairs], shapes=shapes, fit=args.fit,
                                refine=not args.no_refine, seed=args.seed, batch_size=args.batch_size)  # fmt: skip
    for i, image in made:
        write([image], pairs[i][2])
        written += 1
    if not written:
        raise InputError(f"{args.sketch} / {args.style}: none of the inputs could be used (see the warnings above)")
    return _summary(written, args.out, skipped, len(sketches) + len(styles))


def _cmd_mix(args: argparse.Namespace) -> int:
    from sketch2image.errors import InputError
    from sketch2image.pipeline import Sketch2Image

    model = Sketch2Image.from_pretrained(args.model, args.device, noise=args.noise)
    sketches, ids = _inputs(args.sketch)
    write = _writer(args.out, len(sketches))
    styles = model.processor.styles([Path(s) for s in args.styles])  # every style is needed for the mixture
    skipped, written = [], 0
    for path, sid in zip(sketches, ids, strict=True):
        try:
            out = model.mix(path, styles, args.weights, args.mode, refine=not args.no_refine,
                            stroke=args.stroke, fit=args.fit, seed=args.seed)  # fmt: skip
        except InputError as e:
            if len(sketches) == 1:
                raise
            logging.getLogger("sketch2image").warning("skipped %s", e)
            skipped.append(str(path))
            continue
        write(out.images, sid)
        written += 1
    if not written:
        raise InputError(f"{args.sketch}: none of the sketches could be used (see the warnings above)")
    return _summary(written, args.out, skipped, len(sketches))


def _cmd_transfer(args: argparse.Namespace) -> int:
    from sketch2image.data.images import open_rgb
    from sketch2image.errors import InputError
    from sketch2image.pipeline import Sketch2Image

    model = Sketch2Image.from_pretrained(args.model, args.device, noise=args.noise)
    contents, ids = _inputs(args.content)
    write = _writer(args.out, len(contents), "content images' outputs")
    write_sketch = _writer(args.sketch_out, len(contents), "content images' sketches") if args.sketch_out else None
    errors = "raise" if len(contents) == 1 else "skip"
    style = open_rgb(args.style)  # once for every batch; unreadable: an error before anything is written
    skipped = []
    for start in range(0, len(contents), args.batch_size):  # a folder streams: batch by batch, written as done
        part = contents[start : start + args.batch_size]
        # The noise of output i comes from seed + i, i counted over the whole folder.
        out = model.transfer(part, style, snapshot=args.snapshot, refine=not args.no_refine,
                             errors=errors, seed=args.seed + start)  # fmt: skip
        for path, img, sk, sid in zip(part, out.images, out.sketches, ids[start : start + len(part)], strict=True):
            if img is None:
                skipped.append(str(path))
                continue
            write([img], sid)
            if write_sketch is not None:
                write_sketch([sk.expand(3, -1, -1)], sid)
    if len(skipped) == len(contents):
        raise InputError(f"{args.content}: none of the images could be used (see the warnings above)")
    return _summary(len(contents) - len(skipped), args.out, skipped, len(contents))


def _cmd_export(args: argparse.Namespace) -> None:
    from sketch2image.metrics.report import card_metrics, read_report
    from sketch2image.pipeline import Sketch2Image

    metrics = card_metrics(read_report(Path(args.metrics))) if args.metrics else None
    model = Sketch2Image.from_runs(args.ae, args.gan, args.tom)  # every part loads before anything is written
    out = model.save_pretrained(Path(args.out), training_data=args.data or "", metrics=metrics)
    print(f"model folder: {out}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from sketch2image.errors import InputError
    from sketch2image.metrics.evaluate import HeldOutPairs, evaluate, held_out_dirs
    from sketch2image.metrics.registry import parse_metrics
    from sketch2image.metrics.report import report_markdown, write_report
    from sketch2image.pipeline import Sketch2Image
    from sketch2image.sketcher import TOMSketcher
    from sketch2image.train.memory import fixed_mmap_threshold

    metrics = parse_metrics(args.metrics or list(DEFAULT_METRICS))  # a typo fails before anything loads
    fixed_mmap_threshold()  # peak RSS flat in the number of held-out images
    if args.data:
        images, sketches = held_out_dirs(args.data)
    elif args.images and args.sketches:
        images, sketches = Path(args.images), Path(args.sketches)
    else:
        raise InputError("give --data DIR, or both --images and --sketches")
    model = Sketch2Image.load(args.model, args.device, noise=args.noise)
    if args.tom is not None:
        model.tom = TOMSketcher.from_pretrained(args.tom, device=args.device)
    pairs = HeldOutPairs(images, sketches, model.size, args.limit)
    from sketch2image.parallel import world

    main_process = world()[1] == 0
    if main_process:
        print(f"evaluating {args.model} on {len(pairs)} held-out pairs ({images} + {sketches})")
    report = evaluate(model, pairs, None, metrics, refine=not args.no_refine, seed=args.seed,
                      batch_size=args.batch_size, cache_dir=Path(args.cache) if args.cache else None,
                      inception_path=args.inception, num_workers=_workers(args.workers), bootstrap=args.bootstrap,
                      progress=main_process)  # fmt: skip
    if not main_process:  # under torchrun every process scored its share; one writes the report
        return
    report["model"], report["images"], report["sketches"] = str(args.model), str(images), str(sketches)
    out = Path(args.out)
    write_report(report, out, out.with_suffix(".md"), title=f"Evaluation of {args.model}")
    print(report_markdown(report, f"Evaluation of {args.model}"))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _cmd_app(args: argparse.Namespace) -> None:
    from sketch2image.app import serve

    serve(args.model, args.host, args.port, args.device, args.examples)


def _cmd_demo(args: argparse.Namespace) -> None:
    from sketch2image.demo import run_demo

    figure = run_demo(Path(args.out), fast=args.fast, size=args.size)
    print(f"demo figure: {figure.resolve()}")


def _training_args(sp: argparse.ArgumentParser, config: str, example: str) -> None:
    """Options every training command shares; --set reaches any field of the stage's config."""
    sp.add_argument("--out", required=True, help="run folder")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    sp.add_argument("--steps", type=int)
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"any {config} field, e.g. {example}")


DEVICE_HELP = "cpu, cuda or cuda:N (default auto: the GPU when there is one; under torchrun, this process's)"
WORKERS_HELP = "DataLoader processes that decode files (default: from the CPU count; 0: decode in this process)"


def _device(value: str) -> str:
    if value != "auto":
        return value
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{local}" if local is not None else "cuda"


def _workers(value: int | None) -> int:
    from sketch2image.train.feed import workers_for

    return workers_for(-1 if value is None else value)


NOISE_HELP = "refiner noise scale (0: none, the default; 1: as trained)"


def _data_commands(jobs) -> None:
    data = jobs.add_parser("data", help="built-in datasets").add_subparsers(dest="what", required=True)
    om = data.add_parser("openmoji", help="render OpenMoji colour images + their line art")
    om.add_argument("--out", required=True, help="output folder")
    om.add_argument("--size", type=int, default=128)
    om.add_argument("--sketches", type=int, default=60, help="line drawings in the real-sketch set S")
    om.add_argument("--test-fraction", type=float, default=0.1)
    om.add_argument("--seed", type=int, default=0)
    om.add_argument("--limit", type=int, default=None, help="only the first N emojis (quick tries)")
    om.add_argument("--workers", type=int, default=2)
    om.set_defaults(func=_cmd_data_openmoji)

    wt = jobs.add_parser("weights", help="pretrained weight files").add_subparsers(dest="what", required=True)
    wv = wt.add_parser("vgg", help="the normalised VGG-19's first layers as a small file (for TOM on another machine)")
    wv.add_argument("--upto", default="relu3_1", help="deepest layer kept (TOM's defaults need relu3_1)")
    wv.add_argument("--out", required=True, help="a .safetensors file")
    wv.set_defaults(func=_cmd_weights_vgg)


def _training_commands(jobs) -> None:
    """tom train/sketch, ae train, gan train."""
    tom = jobs.add_parser("tom", help="stage 1: sketch synthesis").add_subparsers(dest="what", required=True)
    tr = tom.add_parser("train", help="train TOM on an image folder and a few real sketches")
    tr.add_argument("--images", required=True, help="folder of RGB images (recursive)")
    tr.add_argument("--sketches", required=True, help="folder of real line drawings (20-60 is plenty)")
    _training_args(tr, "TOMConfig", "--set w_gram=0.1")
    tr.add_argument("--size", type=int)
    tr.add_argument("--snapshots", type=int, help="K generator snapshots = K sketches per image")
    tr.set_defaults(func=_cmd_tom_train)

    sk = tom.add_parser("sketch", help="render every snapshot's sketch for every image of a folder")
    sk.add_argument("--run", "--tom", dest="run", required=True,
                    help="TOM run folder (--tom under torchrun, which takes --run for its own --run-path)")  # fmt: skip
    sk.add_argument("--images", required=True)
    sk.add_argument("--out", required=True)
    sk.add_argument("--size", type=int, help="default: the run's training size")
    sk.add_argument("--batch-size", type=int, default=8)
    sk.add_argument("--binarize", type=float, default=None, metavar="T", help="threshold to pure black/white lines")
    sk.add_argument("--device", default="auto", help=DEVICE_HELP)
    sk.add_argument("--workers", type=int, help=WORKERS_HELP)
    sk.add_argument("--no-ink-check", action="store_true",
                    help="write the sketches even when a snapshot draws mostly blank or solid ones")  # fmt: skip
    sk.set_defaults(func=_cmd_tom_sketch)

    ae = jobs.add_parser("ae", help="stage 2: self-supervised auto-encoder").add_subparsers(dest="what", required=True)
    at = ae.add_parser("train", help="train the auto-encoder on a sketch manifest from `s2i tom sketch`")
    at.add_argument("--data", required=True, help="manifest.json written by `s2i tom sketch`")
    at.add_argument("--preset", type=int, help="resolution preset: 64, 128, 256, 512 or 1024 "
                    "(default: the size the sketches were drawn at)")  # fmt: skip
    at.add_argument("--losses", choices=tuple(LOSSES),
                    help="reconstruction (default): reconstruction with Feat-DMI only, the best measured; paper: "
                    "also the paper's style/content triplets, style classification and content MI")  # fmt: skip
    _training_args(at, "AEConfig", "--set dmi=sketch --set w_style_cls=0.5")
    at.set_defaults(func=_cmd_ae_train)

    gan = jobs.add_parser("gan", help="stage 3: GAN refiner").add_subparsers(dest="what", required=True)
    gt = gan.add_parser("train", help="train the refiner on top of a frozen auto-encoder")
    gt.add_argument("--ae", required=True, help="auto-encoder run folder (from `s2i ae train`)")
    gt.add_argument("--data", required=True, help="manifest.json written by `s2i tom sketch`")
    _training_args(gt, "GANConfig", "--set w_rec=10")
    gt.set_defaults(func=_cmd_gan_train)


def _model_args(sp: argparse.ArgumentParser, sketches: bool = True) -> None:
    """Options of every command that runs an exported model."""
    sp.add_argument("--model", required=True, help="model folder from `s2i export`")
    sp.add_argument("--no-refine", action="store_true", help="return the auto-encoder output, skip the refiner")
    sp.add_argument("--device", default="auto", help=DEVICE_HELP)
    sp.add_argument("--seed", type=int, default=0, help="the refiner's noise: output i uses seed + i")
    sp.add_argument("--noise", type=float, default=0.0, help=NOISE_HELP)
    if sketches:
        sp.add_argument("--stroke", choices=STROKES, default=STROKES[0],
                        help="auto: normalise the lines to the model's line weight; none: as drawn")  # fmt: skip
        sp.add_argument("--fit", choices=FITS, default=FITS[0],
                        help="crop the output to the sketch's aspect ratio (default), keep the model's square, "
                        "or also resize to the sketch's own size (LANCZOS)")  # fmt: skip


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return n


def _use_commands(jobs) -> None:
    """generate, mix, transfer: a model applied to files or folders."""
    ge = jobs.add_parser("generate", help="paint sketch(es) in the style of image(s)")
    _model_args(ge)
    ge.add_argument("--sketch", required=True, help="a sketch file or a folder of sketches")
    ge.add_argument("--style", required=True, help="a style image or a folder of them")
    ge.add_argument("--out", required=True, help="an image file (one output) or a folder")
    ge.add_argument("--pair-by-name", action="store_true",
                    help="folders: pair files with the same name instead of every sketch x every style")  # fmt: skip
    ge.add_argument("--batch-size", type=_at_least_one, default=8, help="pairs painted at once")
    ge.set_defaults(func=_cmd_generate)

    mx = jobs.add_parser("mix", help="a sketch (or a folder of them) in a mixture of 2-4 styles")
    _model_args(mx)
    mx.add_argument("--sketch", required=True, help="a sketch file or a folder of sketches")
    mx.add_argument("--styles", required=True, nargs="+")
    mx.add_argument("--weights", type=float, nargs="+", help="vector mode: one weight per style")
    mx.add_argument("--mode", choices=MIX_MODES, default=MIX_MODES[0])
    mx.add_argument("--out", required=True)
    mx.set_defaults(func=_cmd_mix)

    tf = jobs.add_parser("transfer", help="style transfer: content image -> TOM sketch -> painted in a style")
    _model_args(tf, sketches=False)
    tf.add_argument("--content", required=True, help="an image file or a folder of them")
    tf.add_argument("--style", required=True)
    tf.add_argument("--out", required=True)
    tf.add_argument("--snapshot", type=int, default=0, help="which TOM snapshot draws the sketch")
    tf.add_argument("--sketch-out", help="also save the intermediate sketch here")
    tf.add_argument("--batch-size", type=_at_least_one, default=8, help="images drawn and painted at once")
    tf.set_defaults(func=_cmd_transfer)


def _model_commands(jobs) -> None:
    """export, eval, app, demo."""
    ex = jobs.add_parser("export", help="bundle TOM + AE + refiner runs into one shareable model folder")
    ex.add_argument("--ae", required=True, help="auto-encoder run folder")
    ex.add_argument("--gan", help="GAN run folder (its EMA refiner)")
    ex.add_argument("--tom", help="TOM run folder (needed for `s2i transfer`)")
    ex.add_argument("--data", help="a line describing the training data, for the model card")
    ex.add_argument("--metrics", help="an `s2i eval` report (JSON) to record in the model card")
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_cmd_export)

    ev = jobs.add_parser("eval", help="FID/KID, SR, perceptual distance, PSNR/SSIM, Skt-Rec, Sty-Rec on held-out data")
    ev.add_argument("--model", required=True, help="model folder from `s2i export`, or an auto-encoder run folder")
    ev.add_argument("--data", help="folder with a held-out split (images/test + lines/test, or images/ + sketches/)")
    ev.add_argument("--images", help="held-out images (instead of --data)")
    ev.add_argument("--sketches", help="their sketches, same relative file names (instead of --data)")
    ev.add_argument("--metrics", help=f"comma-separated names, or 'all' (default: {','.join(DEFAULT_METRICS)})")
    ev.add_argument("--tom", help="TOM run folder for skt_rec and content_leak when the model folder has none")
    ev.add_argument("--bootstrap", type=int, default=0,
                    help="resamples of the held-out set: adds FID's and KID's spread (bootstrap_std)")  # fmt: skip
    ev.add_argument("--out", default="eval.json", help="JSON report; a markdown table is written beside it")
    ev.add_argument("--no-refine", action="store_true", help="evaluate the auto-encoder output alone")
    ev.add_argument("--limit", type=int, help="only the first N held-out pairs")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--noise", type=float, default=0.0, help=NOISE_HELP)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--workers", type=int, help=WORKERS_HELP)
    ev.add_argument("--cache", help="folder for cached reference statistics (default $S2I_CACHE_DIR or ~/.cache)")
    ev.add_argument("--inception", help="explicit path to the FID Inception file (default: the installed package's)")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.set_defaults(func=_cmd_eval)

    app = jobs.add_parser("app", help="web app: draw, pick or mix styles, restyle photos (needs sketch2image[app])")
    app.add_argument("--model", help="model folder (default: the demo's ./s2i-demo/model)")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--examples", help="folder of style images for the gallery")
    app.add_argument("--device", default="auto", help=DEVICE_HELP)
    app.set_defaults(func=_cmd_app)

    demo = jobs.add_parser("demo", help="offline end-to-end demo on the built-in OpenMoji data")
    demo.add_argument("--out", default="s2i-demo", help="demo folder (resumable)")
    demo.add_argument("--fast", action="store_true", help="a ~2-minute smoke version")
    demo.add_argument("--size", type=int, default=None)
    demo.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="s2i", description="Self-supervised sketch-to-image synthesis.")
    p.add_argument("--version", action="version", version=f"sketch2image {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    jobs = p.add_subparsers(dest="job", required=True, parser_class=_Parser)
    for group in (_data_commands, _training_commands, _use_commands, _model_commands):
        group(jobs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("sketch2image").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if getattr(args, "device", None) is not None:
        args.device = _device(args.device)
    try:
        rc = args.func(args) or 0
    except S2IError as e:
        print(f"s2i: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ...: the user can act on these
        print(f"s2i: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s2i: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
    return rc


def _close_process_group() -> None:
    """Under torchrun / accelerate launch: tear the process group down before exit.

    Left to interpreter shutdown, gloo's threads can be destroyed while still joinable and the
    process aborts ("terminate called without an active exception") after a finished run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
