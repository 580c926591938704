"""Training loop for TOM (paper §3): online AdaIN targets, Gram discriminator, K snapshots.

Every step a batch of RGB images is matched with a freshly drawn random batch of real
sketches, so the feature target ``AdaIN(E(I_c), E(I_s))`` keeps changing; the generator is
saved at K points after a warm-up, and each snapshot draws in a different way.

Reads an image folder and a folder of real sketches; writes a run folder:
``config.json``, ``snapshots/snapshot_XX.safetensors`` (what later stages use),
``checkpoints/`` (resume), ``samples/*.png``, ``log.jsonl``.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from sketch2image.configs import TOMConfig
from sketch2image.data.images import ImageFolder, to_grey
from sketch2image.errors import InputError
from sketch2image.figures import save_grid
from sketch2image.losses import adain, d_loss, g_adv_loss, gram, mean_std
from sketch2image.nets.tom import GramDiscriminator, SketchGenerator, count_parameters
from sketch2image.nets.vgg import VGGEncoder, load_vgg
from sketch2image.sketcher import save_snapshot
from sketch2image.storage import write_run_info
from sketch2image.train import checkpoint as ckpt
from sketch2image.train.common import (
    adam,
    discriminator_step,
    make_accelerator,
    prepare_run_dir,
    run_steps,
    seed_everything,
    speed_up,
)
from sketch2image.train.distributed import check_shared, local_rows
from sketch2image.train.feed import workers_for
from sketch2image.train.guard import FiniteGuard

log = logging.getLogger("sketch2image")


def stroke_variants(sketches: torch.Tensor, enabled: bool) -> dict[str, torch.Tensor]:
    """The real sketches as drawn, with bolder lines, and with lighter (pencil-like) lines."""
    variants = {"as_drawn": sketches}
    if enabled:
        variants["bold"] = -F.max_pool2d(-sketches, 3, 1, 1)
        variants["light"] = 1 - 0.5 * (1 - sketches)
    return variants


@dataclass
class SketchStats:
    """What the loop needs of every real sketch, computed once: AdaIN stats and Gram matrices."""

    mean: torch.Tensor  # (N, C, 1, 1) at the feature layer
    std: torch.Tensor
    grams: dict[str, torch.Tensor]  # layer -> (N, C, C)
    variant: list[str]  # stroke variant of each row

    @staticmethod
    @torch.no_grad()
    def compute(vgg: VGGEncoder, variants: dict[str, torch.Tensor], cfg: TOMConfig, batch: int = 16):
        layers = sorted(set(cfg.gram_layers) | {cfg.feature_layer})
        means, stds, grams, names = [], [], {g: [] for g in cfg.gram_layers}, []
        device = next(vgg.parameters()).device
        for name, sk in variants.items():
            for chunk in sk.split(batch):
                feats = vgg(chunk.to(device), layers)
                m, s = mean_std(feats[cfg.feature_layer])
                means.append(m)
                stds.append(s)
                for g in cfg.gram_layers:
                    grams[g].append(gram(feats[g]))
            names += [name] * len(sk)
        return SketchStats(torch.cat(means), torch.cat(stds), {g: torch.cat(v) for g, v in grams.items()}, names)


def target_pool(step: int, cfg: TOMConfig, stats: SketchStats) -> torch.Tensor:
    """Indices of the real sketches that may be drawn at ``step`` (a pure function of the step).

    Before the window leading to each snapshot the pool is one random subset of one stroke
    variant, so consecutive snapshots are pulled towards different drawing styles.
    """
    variants = sorted(set(stats.variant), key=stats.variant.index)
    as_drawn = torch.tensor([i for i, v in enumerate(stats.variant) if v == variants[0]])
    for k, snap in enumerate(cfg.snapshot_steps()):
        if snap - cfg.snapshot_every < step <= snap:
            name = variants[k % len(variants)]
            rows = torch.tensor([i for i, v in enumerate(stats.variant) if v == name])
            if cfg.snapshot_focus >= 1.0:
                return rows
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + k)
            n = max(2, math.ceil(cfg.snapshot_focus * len(rows)))
            return rows[torch.randperm(len(rows), generator=g)[:n]]
    return as_drawn


def load_sketch_set(root: Path, size: int) -> torch.Tensor:
    """Real sketches as (N, 1, size, size) grey in [0, 1], white background."""
    folder = ImageFolder(root, size, progress=False)
    sketches = torch.stack([folder[i]["image"] for i in range(len(folder))])
    grey = to_grey(sketches)
    if grey.mean() < 0.5:  # white lines on black: flip to dark lines on white
        log.warning("%s: sketches look white-on-black; inverting them", root)
        grey = 1 - grey
    return grey


def build_models(cfg: TOMConfig) -> tuple[SketchGenerator, GramDiscriminator]:
    g = SketchGenerator(cfg.feature_layer, cfg.g_width, cfg.g_max_width)
    d = GramDiscriminator(tuple(cfg.gram_layers), cfg.d_forms, cfg.d_hidden, cfg.d_norm)
    return g, d


class LocalBatches:
    """This rank's rows of every global batch of a batch sampler."""

    def __init__(self, batches: BatchSampler, rows: slice, skip: int = 0) -> None:
        self.batches, self.rows, self.skip = batches, rows, skip

    def __iter__(self):
        for batch in itertools.islice(self.batches, self.skip, None):
            yield batch[self.rows]

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


class TOMTrainer(ckpt.Checkpointed):
    """Holds the networks and does one training step; the loop around it is ``train_tom``."""

    def __init__(
        self, cfg: TOMConfig, vgg: VGGEncoder, stats: SketchStats, accelerator: Accelerator, run_dir: Path | None = None
    ) -> None:
        self.cfg, self.vgg, self.stats, self.acc = cfg, vgg, stats, accelerator
        self.guard = FiniteGuard("TOM", accelerator, run_dir)
        self.g, self.d = (speed_up(m.to(accelerator.device), cfg, accelerator.device) for m in build_models(cfg))
        self.opt_g = adam(self.g.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2))
        self.opt_d = adam(self.d.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))
        self.g, self.d, self.opt_g, self.opt_d = accelerator.prepare(self.g, self.d, self.opt_g, self.opt_d)
        self.layers = sorted(set(cfg.gram_layers) | {cfg.feature_layer})
        # Flips and targets are drawn for the global batch alike on every rank; each keeps its rows.
        self.rows = local_rows(accelerator, cfg.batch_size)
        self.gen = torch.Generator().manual_seed(cfg.seed * 7 + 5)

    def step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        """One D and one G update on this rank's rows (``images``) of the step's global batch."""
        cfg, acc = self.cfg, self.acc
        self.guard.step = step
        flip = (torch.rand(cfg.batch_size, generator=self.gen) < 0.5)[self.rows].to(images.device)
        pool = target_pool(step, cfg, self.stats)
        idx = pool[torch.randint(len(pool), (cfg.batch_size,), generator=self.gen)][self.rows].to(images.device)
        if len(images) != len(idx):
            raise ValueError(f"expected this rank's {len(idx)} rows of the global batch, got {len(images)} images")
        if cfg.hflip:
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        with torch.no_grad():
            f_content = self.vgg(images, [cfg.feature_layer])[cfg.feature_layer]
            f_target = adain(f_content, self.stats.mean[idx], self.stats.std[idx])
        real_grams = {g: self.stats.grams[g][idx] for g in cfg.gram_layers}

        with acc.autocast():
            sketch = self.g(f_content)
            feats = self.vgg(sketch, self.layers)
            fake_grams = {g: gram(feats[g].float()) for g in cfg.gram_layers}

        # D: real sketches' Grams vs the generated ones (detached).
        detached = {k: v.detach() for k, v in fake_grams.items()}
        loss_d, d = discriminator_step(
            acc,
            self.d,
            self.opt_d,
            lambda d: d_loss(d(real_grams), d(detached), cfg.gan_loss),
            self.guard,
            cfg.max_grad_norm,
        )

        # G: fool D + match the online AdaIN feature target (+ optional Gram matching).
        with acc.autocast():
            fake_logits = d(fake_grams)
            loss_adv = g_adv_loss(fake_logits, cfg.gan_loss)
            loss_feat = F.mse_loss(feats[cfg.feature_layer].float(), f_target)
            loss_gram = sum(F.mse_loss(fake_grams[g], real_grams[g]) for g in cfg.gram_layers) / len(cfg.gram_layers)
            loss_g = cfg.w_adv * loss_adv + cfg.w_feat * loss_feat + (cfg.w_gram * loss_gram if cfg.w_gram else 0.0)
        terms = {"loss_adv": loss_adv, "loss_feat": loss_feat, "loss_gram": loss_gram, "d_fake": fake_logits}
        self.guard.update(self.opt_g, loss_g, self.g.parameters(), terms, "G", cfg.max_grad_norm)
        norms = self.guard.end_step()
        return {
            "loss_d": loss_d.item(),
            "loss_adv": loss_adv.item(),
            "loss_feat": loss_feat.item(),
            "loss_gram": float(loss_gram.detach()),
            "d_fake": fake_logits.mean().item(),
            "grad_d": norms["D"],
            "grad_g": norms["G"],
        }

    @torch.no_grad()
    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        g = self.acc.unwrap_model(self.g)
        return g(self.vgg(images, [self.cfg.feature_layer])[self.cfg.feature_layer])

    # --- checkpoint state -------------------------------------------------------------------
    def _parts(self) -> tuple[dict, dict, dict]:
        return {"g": self.g, "d": self.d}, {"opt_g": self.opt_g, "opt_d": self.opt_d}, {"gen": self.gen}


def train_tom(
    cfg: TOMConfig, images: Path, sketches: Path, run_dir: Path, *, resume: bool = True, progress: bool = True
) -> Path:
    """Train (or continue) a TOM run; returns the run folder."""
    run_dir = Path(run_dir)
    acc = make_accelerator(cfg.mixed_precision)
    dataset = ImageFolder(images, cfg.size, progress=progress and acc.is_main_process)
    real = load_sketch_set(Path(sketches), cfg.size)
    if len(real) < 2:
        raise InputError(f"{sketches}: TOM needs at least 2 real sketches, found {len(real)}")
    if acc.is_main_process:
        prepare_run_dir(run_dir, cfg, resume)
        write_run_info(run_dir, "tom", images=Path(images), sketches=Path(sketches), n_images=len(dataset),
                       n_sketches=len(real))  # fmt: skip
    acc.wait_for_everyone()
    check_shared(acc, run_dir)
    seed_everything(cfg.seed)

    vgg = load_vgg(cfg.vgg).to(acc.device)
    stats = SketchStats.compute(vgg, stroke_variants(real, cfg.stroke_variants), cfg)
    stats.mean, stats.std = stats.mean.to(acc.device), stats.std.to(acc.device)
    stats.grams = {k: v.to(acc.device) for k, v in stats.grams.items()}
    trainer = TOMTrainer(cfg, vgg, stats, acc, run_dir)

    start = ckpt.resume_step(run_dir, trainer.load_state, resume, acc)
    if start >= cfg.steps:
        return run_dir

    if acc.is_main_process:
        print(
            f"TOM: {len(dataset)} images, {len(real)} real sketches, G {count_parameters(trainer.g):,} params, "
            f"D {count_parameters(trainer.d):,} params, {cfg.size}px, steps {start}->{cfg.steps}"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=cfg.steps * cfg.batch_size, generator=gen)
    # Global batches drawn alike on every rank (each loads only its own rows); a resumed run skips the
    # batches already trained on, so it sees exactly the batches of an uninterrupted run.
    batches = LocalBatches(BatchSampler(sampler, cfg.batch_size, drop_last=True), trainer.rows, skip=start)
    # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG when the
    # iterator starts, which a resumed run does once more than an uninterrupted one.
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers_for(cfg.num_workers),  # -1: from the CPU count, as in every stage
        pin_memory=acc.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    spread = torch.linspace(0, len(dataset) - 1, min(8, len(dataset))).long().tolist()  # a varied sample set
    fixed = torch.stack([dataset[i]["image"] for i in spread]).to(acc.device)
    snap_steps = cfg.snapshot_steps()
    batch_iter = iter(loader)

    def step_fn(step: int) -> dict[str, float]:
        return trainer.step(next(batch_iter)["image"].to(acc.device, non_blocking=True), step)

    def after_step(step: int) -> None:
        if step not in snap_steps:
            return
        g = acc.unwrap_model(trainer.g)
        trainer.guard.check_weights(g.state_dict())  # on every rank: a diverged G stops them all
        if acc.is_main_process:
            variant = stats.variant[int(target_pool(step, cfg, stats)[0])]
            save_snapshot(run_dir, snap_steps.index(step), step, g, cfg, variant)

    run_steps(
        acc,
        trainer,
        cfg,
        run_dir,
        start,
        desc="TOM",
        step_fn=step_fn,
        sample_fn=lambda path: save_grid(path, [fixed, trainer.sketch(fixed)]),
        after_step=after_step,
        progress=progress,
    )
    return run_dir
