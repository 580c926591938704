"""Training loop for the GAN refiner (paper §4.2, Eq. 13–14, appendix A.4).

The auto-encoder is frozen. Each step: an image and one of its sketches (paired, never
mismatched, as in the paper) → AE output and style vector → G2 → hinge loss against the
patch discriminator + λ·‖G2 − I‖² to the real image (``GANConfig.rec_form``). An exponential
moving average of G2 is kept and is what sampling, evaluation and ``model/`` use.

Writes a run folder: ``config.json``, ``run.json`` (which AE), ``model/`` (EMA refiner),
``checkpoints/``, ``samples/``, ``log.jsonl``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from accelerate import Accelerator

from sketch2image.configs import GANConfig
from sketch2image.data.paired import PairedData, PairedFiles, as_float, pairs_at
from sketch2image.figures import save_grid
from sketch2image.losses import d_loss, g_adv_loss, refiner_rec
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.refiner import PatchDiscriminator, Refiner
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
from sketch2image.train.distributed import check_shared, load_pairs, local_rows, rank_seed
from sketch2image.train.ema import ema_decay_at, ema_update
from sketch2image.train.feed import Feed, StepPlan, states, workers_for
from sketch2image.train.guard import FiniteGuard
from sketch2image.train.memory import MEMORY_ADVICE, check_memory, estimate


class GANTrainer(ckpt.Checkpointed):
    def __init__(
        self,
        cfg: GANConfig,
        ae: SketchAutoEncoder,
        data: PairedFiles | PairedData,
        accelerator: Accelerator,
        run_dir: Path | None = None,
    ) -> None:
        cfg = cfg.for_size(ae.cfg.size)
        self.cfg, self.acc, self.data = cfg, accelerator, data
        self.guard = FiniteGuard("GAN", accelerator, run_dir)
        self.ae = ae.to(accelerator.device).eval().requires_grad_(False)
        g = Refiner(cfg.model_config(ae.cfg.size, ae.cfg.style_dim)).gradient_checkpointing(cfg.grad_checkpoint)
        d = PatchDiscriminator(cfg.d_width, cfg.d_layers)
        self.g_ema = copy.deepcopy(g).to(accelerator.device).eval().requires_grad_(False)
        g, d = (speed_up(m.to(accelerator.device), cfg, accelerator.device) for m in (g, d))
        opt_g = adam(g.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2))
        opt_d = adam(d.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))
        self.g, self.d, self.opt_g, self.opt_d = accelerator.prepare(g, d, opt_g, opt_d)
        # The same global batch planned on every rank, each loading its rows (train/feed.py).
        self.rows = local_rows(accelerator, cfg.batch_size)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 7 + 3)
        self.feed = Feed(data, self.planner, {"data_gen": self.data_gen}, self.rows, last=cfg.steps,
                         device=accelerator.device, num_workers=cfg.num_workers)  # fmt: skip

    def planner(self, gens: dict[str, torch.Generator]):
        """Each step: a global batch of images and one of each image's sketches (paired, as in the paper)."""
        g, n, b, k = gens["data_gen"], len(self.data), self.cfg.batch_size, self.data.k

        def plan(step: int) -> StepPlan:
            idx = torch.randperm(n, generator=g)[:b]
            pick = torch.randint(k, (len(idx),), generator=g)
            return StepPlan(step, idx, pick[:, None], {}, states(gens))

        return plan

    @torch.no_grad()
    def ae_output(self, sketches: torch.Tensor, styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = self.ae(sketches, styles, features=True)
        return res["out"], res["f_style"]

    def step(self, step: int) -> dict[str, float]:
        cfg, acc = self.cfg, self.acc
        self.guard.step = step
        batch, _ = self.feed.next(step)
        images, sketches = as_float(batch, acc.device)
        x_ae, f_style = self.ae_output(sketches[:, 0], images)
        with acc.autocast():
            fake = self.g(x_ae, f_style)
        loss_d, d = discriminator_step(
            acc,
            self.d,
            self.opt_d,
            lambda d: d_loss(d(images), d(fake.detach()), "hinge"),
            self.guard,
            cfg.max_grad_norm,
        )
        with acc.autocast():
            adv = g_adv_loss(d(fake), "hinge")
            rec = refiner_rec(fake, images, cfg.rec_form)
            loss_g = adv + cfg.w_rec * rec
        self.guard.update(self.opt_g, loss_g, self.g.parameters(), {"adv": adv, "rec": rec}, "G2", cfg.max_grad_norm)
        ema_update(self.g_ema, acc.unwrap_model(self.g), ema_decay_at(step, cfg.ema_decay, cfg.ema_ramp))
        norms = self.guard.end_step()
        return {
            "loss_d": loss_d.item(),
            "adv": adv.item(),
            "rec": rec.item(),
            "grad_d": norms["D"],
            "grad_g": norms["G2"],
        }

    @torch.no_grad()
    def refine(self, sketches: torch.Tensor, styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_ae, f_style = self.ae_output(sketches, styles)
        return x_ae, self.g_ema(x_ae, f_style)

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, source: str) -> None:
        super().load_state(tensors, meta, source)
        self.feed.expect = None  # the next step plans again from the loaded generator

    def _parts(self) -> tuple[dict, dict, dict]:
        modules = {"g": self.g, "d": self.d, "g_ema": self.g_ema}
        return modules, {"opt_g": self.opt_g, "opt_d": self.opt_d}, {"data_gen": self.data_gen}


def sample_grid(trainer: GANTrainer, path: Path, n: int = 6) -> Path:
    """Rows: sketch | image (its style) | AE output | refined (EMA) | AE with a mismatched style | refined."""
    data = trainer.data
    idx = torch.linspace(0, len(data) - 1, min(n, len(data))).long().tolist()
    images, sketches = pairs_at(data, idx, (0,), trainer.acc.device)
    sk = sketches[:, 0]
    ae, refined = trainer.refine(sk, images)
    ae_mis, refined_mis = trainer.refine(sk, images.roll(1, 0))
    return save_grid(path, [sk, images, ae, refined, ae_mis, refined_mis])


def train_gan(
    cfg: GANConfig, ae_run: Path, manifest: Path, run_dir: Path, *, resume: bool = True, progress: bool = True
) -> Path:
    run_dir = Path(run_dir)
    acc = make_accelerator(cfg.mixed_precision)
    ae = SketchAutoEncoder.from_pretrained(ae_run, acc.device)
    cfg = cfg.for_size(ae.cfg.size)  # the run's config.json records the widths actually used
    data = load_pairs(acc, manifest, ae.cfg.size)
    with torch.device("meta"):  # sizes only: nothing is allocated
        n_g = sum(p.numel() for p in Refiner(cfg.model_config(ae.cfg.size, ae.cfg.style_dim)).parameters())
        n_d = sum(p.numel() for p in PatchDiscriminator(cfg.d_width, cfg.d_layers).parameters())
    need = estimate(
        n_g + n_d,
        n_g + sum(p.numel() for p in ae.parameters()),
        cfg.width + ae.cfg.width,
        ae.cfg.size,
        cfg.batch_size // acc.num_processes,
        workers_for(cfg.num_workers),
        4,
        cfg.mixed_precision != "no",
    )
    check_memory("GAN", need, acc.device, MEMORY_ADVICE)  # fmt: skip
    if acc.is_main_process:
        prepare_run_dir(run_dir, cfg, resume)
        write_run_info(run_dir, "gan", ae=Path(ae_run), data=Path(manifest), n_images=len(data))
    acc.wait_for_everyone()
    check_shared(acc, run_dir)
    seed_everything(cfg.seed)
    trainer = GANTrainer(cfg, ae, data, acc, run_dir)  # same initial weights on every rank
    start = ckpt.resume_step(run_dir, trainer.load_state, resume, acc)
    if acc.process_index:  # the refiner's per-pixel noise must differ per rank
        torch.manual_seed(rank_seed(cfg.seed + start, acc))
    if acc.is_main_process:
        n_g = sum(p.numel() for p in trainer.g_ema.parameters())
        n_d = sum(p.numel() for p in acc.unwrap_model(trainer.d).parameters())
        print(
            f"GAN: {len(data)} images, {ae.cfg.size}px, G2 {n_g:,} params, D {n_d:,} params; steps {start}->{cfg.steps}"
        )
    try:
        run_steps(
            acc,
            trainer,
            cfg,
            run_dir,
            start,
            desc="GAN",
            step_fn=trainer.step,
            sample_fn=lambda path: sample_grid(trainer, path),
            save_model=lambda: trainer.g_ema.save_pretrained(run_dir / "model"),
            progress=progress,
        )
    finally:
        trainer.feed.close()
    return run_dir
