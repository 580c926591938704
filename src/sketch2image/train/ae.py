"""Training loop for the self-supervised auto-encoder (paper §4.1, appendix A.1).

One step: augment the style input (affine warp) and two of the image's K sketches (masking,
thickening); reconstruct the untouched image from (augmented style, sketch); add the style
triplet, content triplet, momentum style classification and content MI terms, each switchable
by its weight. The classifier head works on a subset of ``cls_k`` images that is redrawn,
relabelled and re-initialised every round (long enough for each image to be seen ``cls_views``
times); batches are drawn from that subset.

Writes a run folder: ``config.json``, ``model/`` (``SketchAutoEncoder.save_pretrained``), ``checkpoints/``,
``samples/``, ``log.jsonl``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

from sketch2image.configs import AEConfig
from sketch2image.data.augment import mask_regions, random_affine, thicken
from sketch2image.data.paired import PairedData
from sketch2image.errors import S2IError
from sketch2image.figures import save_grid
from sketch2image.losses import content_triplet, style_triplet, uniform_kl, uniform_prediction_loss
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.storage import atomic_write_json
from sketch2image.train import checkpoint as ckpt
from sketch2image.train.common import adam, make_accelerator, prepare_run_dir, run_steps, seed_everything, speed_up
from sketch2image.train.distributed import gather, local_rows
from sketch2image.train.guard import FiniteGuard


class AETrainer(ckpt.Checkpointed):
    """Networks, optimisers, the momentum-classifier state, and one training step."""

    def __init__(
        self,
        cfg: AEConfig,
        n_images: int,
        accelerator: Accelerator,
        vgg: nn.Module | None = None,
        run_dir: Path | None = None,
    ):
        cfg.validate()
        self.cfg, self.acc, self.n = cfg, accelerator, n_images
        self.guard = FiniteGuard("AE", accelerator, run_dir)
        self.k = min(cfg.cls_k, n_images)
        if cfg.w_style_cls or cfg.w_content_mi:
            if self.k < cfg.batch_size:
                raise S2IError(
                    f"momentum classification needs cls_k >= batch_size; got {self.k} images per subset "
                    f"for batch {cfg.batch_size}"
                )
        model = SketchAutoEncoder(cfg.model_config()).gradient_checkpointing(cfg.grad_checkpoint)
        model = speed_up(model.to(accelerator.device), cfg, accelerator.device)
        head = nn.Linear(cfg.style_dim, self.k)
        opt = adam(model.parameters(), cfg.lr, (cfg.beta1, cfg.beta2))
        opt_head = adam(head.parameters(), cfg.lr * cfg.cls_lr_mult, (cfg.beta1, cfg.beta2))
        self.model, self.head, self.opt, self.opt_head = accelerator.prepare(model, head, opt, opt_head)
        if cfg.w_perceptual and vgg is None:  # the optional perceptual term needs the pretrained VGG-19
            from sketch2image.nets.vgg import load_vgg

            vgg = load_vgg().to(accelerator.device)
        self.vgg = vgg
        self.round = -1
        self.subset = torch.arange(self.k)
        # A round lasts until each of its k images has been seen about cls_views times (or cls_every steps).
        self.round_steps = cfg.cls_every or math.ceil(cfg.cls_views * self.k / cfg.batch_size)
        self.round_acc: list[float] = []  # the head's batch accuracy, this round
        # Seeded alike on every rank: each rank draws the same global batch and augmentation and keeps its
        # own rows (train/distributed.py), so the run does not depend on the number of processes.
        self.rows = local_rows(accelerator, cfg.batch_size)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 7 + 1)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 7 + 2)

    @property
    def uses_classes(self) -> bool:
        return bool(self.cfg.w_style_cls or self.cfg.w_content_mi)

    def start_round(self, round_: int) -> None:
        """New subset of k images, labels = their position in it, fresh head and head optimiser."""
        self.round = round_
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + round_)
        self.subset = torch.randperm(self.n, generator=g)[: self.k]
        head = self.acc.unwrap_model(self.head)
        with torch.no_grad():
            bound = 1 / math.sqrt(head.in_features)
            head.weight.copy_(torch.rand(head.weight.shape, generator=g) * 2 * bound - bound)
            head.bias.copy_(torch.rand(head.bias.shape, generator=g) * 2 * bound - bound)
        self.opt_head.state.clear()
        self.round_acc = []

    def sample(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset indices and class labels for the batch of ``step`` (1-based)."""
        if self.uses_classes:
            r = (step - 1) // self.round_steps
            if r != self.round:
                self.start_round(r)
            pos = torch.randperm(self.k, generator=self.data_gen)[: self.cfg.batch_size]
            return self.subset[pos], pos
        idx = torch.randperm(self.n, generator=self.data_gen)[: self.cfg.batch_size]
        return idx, torch.zeros_like(idx)

    def losses(self, images: torch.Tensor, sketches: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every enabled loss term for one global batch (images (B,3,S,S), sketches (B,K,1,S,S)).

        The augmentation is drawn for the whole global batch; the networks run on this rank's rows.
        """
        cfg, g = self.cfg, self.aug_gen
        b, k = sketches.shape[:2]
        style_in = random_affine(
            images,
            max_rotate=cfg.aug_max_rotate,
            min_scale=cfg.aug_min_scale,
            max_scale=cfg.aug_max_scale,
            max_shift=cfg.aug_max_shift,
            generator=g,
        )
        pick = torch.randint(k, (b,), generator=g)
        other = (pick + torch.randint(1, max(k, 2), (b,), generator=g)) % k  # a different sketch when K > 1
        rows = torch.arange(b)
        skt_t = thicken(
            mask_regions(
                sketches[rows, pick.to(rows.device)], regions=cfg.mask_regions, max_frac=cfg.mask_max_frac, generator=g
            ),
            cfg.thicken_p,
            generator=g,
        )
        skt_pos = None
        if cfg.w_content_triplet:
            skt_pos = mask_regions(
                sketches[rows, other.to(rows.device)], regions=cfg.mask_regions, max_frac=cfg.mask_max_frac, generator=g
            )
        loc = self.rows
        images, style_in, skt_t, labels = images[loc], style_in[loc], skt_t[loc], labels[loc]
        skt_pos = skt_pos[loc] if skt_pos is not None else None
        res = self.model(
            skt_t, style_in, original=images if cfg.w_style_triplet else None, other_sketch=skt_pos, features=True
        )
        out, f_style, content = res["out"], res["f_style"], res["content"]
        terms: dict[str, torch.Tensor] = {"rec": F.mse_loss(out, images)}
        if cfg.w_perceptual:
            layers = ["relu1_2", "relu2_2", "relu3_1"]
            fo, fi = self.vgg(out, layers), self.vgg(images, layers)
            terms["perceptual"] = sum(F.mse_loss(fo[n], fi[n]) for n in layers) / len(layers)
        if cfg.w_style_triplet:
            f_org = res["f_org"]
            negatives = gather(self.acc, f_org).roll(1, 0)[loc]  # another image of the *global* batch
            terms["style_triplet"] = style_triplet(f_style, f_org, negatives, cfg.style_margin)
        if cfg.w_content_triplet:
            f_pos = res["f_pos"]
            negatives = gather(self.acc, f_pos).roll(1, 0)[loc]
            terms["content_triplet"] = content_triplet(content[-1], f_pos, negatives, cfg.content_margin)
        if self.uses_classes:
            # The head always learns the round's classes, so the MI term never measures a random head; the
            # style encoder learns from it only when w_style_cls > 0 (otherwise the head sees detached styles).
            logits = self.head(f_style if cfg.w_style_cls else f_style.detach())
            terms["style_cls" if cfg.w_style_cls else "cls_head"] = F.cross_entropy(logits, labels)
            self.batch_acc = (logits.detach().argmax(1) == labels).float().mean()
        if cfg.w_content_mi:
            head = self.acc.unwrap_model(self.head)
            pooled = content[-1].mean(dim=(2, 3))  # average-pooled to the style vector's size
            mi = uniform_kl if cfg.content_mi_form == "kl" else uniform_prediction_loss
            terms["content_mi"] = mi(F.linear(pooled, head.weight.detach(), head.bias.detach()))
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {
            "rec": self.cfg.w_rec,
            "perceptual": self.cfg.w_perceptual,
            "style_triplet": self.cfg.w_style_triplet,
            "content_triplet": self.cfg.w_content_triplet,
            "style_cls": self.cfg.w_style_cls,
            "content_mi": self.cfg.w_content_mi,
            "cls_head": 1.0,  # the head's own loss on detached style vectors (w_style_cls = 0)
        }
        return sum(weights[name] * value for name, value in terms.items())

    def step(self, data: PairedData, step: int) -> dict[str, float]:
        self.guard.step = step
        idx, labels = self.sample(step)
        images, sketches = data.batch(idx, self.acc.device)
        self.model.train()
        with self.acc.autocast():
            terms = self.losses(images, sketches, labels.to(self.acc.device))
            loss = self.total(terms)
        # The head learns from the classification term only (the MI term uses it detached).
        opts = [self.opt, self.opt_head] if self.uses_classes else [self.opt]
        params = [*self.model.parameters(), *self.head.parameters()]
        self.guard.update(opts, loss, params, {**terms, "loss": loss}, "the AE", self.cfg.max_grad_norm)
        grad = self.guard.end_step()["the AE"]
        out = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, "grad": grad}
        if self.uses_classes:  # the head's accuracy over the round's recent batches (chance: 1/k)
            self.round_acc.append(self.batch_acc.item())
            out["cls_acc"] = sum(self.round_acc[-20:]) / len(self.round_acc[-20:])
        return out

    @torch.no_grad()
    def generate(self, sketches: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        m = self.acc.unwrap_model(self.model)
        m.eval()
        out = m(sketches, styles)
        m.train()
        return out

    # --- checkpoint state -------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = super().state()
        return {**tensors, "subset": self.subset.clone()}, {**meta, "round": self.round}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, source: str) -> None:
        super().load_state(tensors, meta, source)
        self.subset, self.round = tensors["subset"], meta["round"]

    def _parts(self) -> tuple[dict, dict, dict]:
        modules, optimizers = {"ae": self.model, "head": self.head}, {"opt": self.opt, "opt_head": self.opt_head}
        return modules, optimizers, {"data_gen": self.data_gen, "aug_gen": self.aug_gen}


def sample_grid(trainer: AETrainer, data: PairedData, path: Path, n: int = 6) -> Path:
    """Rows: sketch | its own image as style | output | a mismatched style | output."""
    idx = torch.linspace(0, len(data) - 1, min(n, len(data))).long()
    images, sketches = data.batch(idx, trainer.acc.device)
    sk = sketches[:, 0]
    other = images.roll(1, 0)
    return save_grid(path, [sk, images, trainer.generate(sk, images), other, trainer.generate(sk, other)])


def train_ae(cfg: AEConfig, manifest: Path, run_dir: Path, *, resume: bool = True, progress: bool = True) -> Path:
    cfg.validate()
    run_dir = Path(run_dir)
    acc = make_accelerator(cfg.mixed_precision)
    data = PairedData.from_manifest(manifest, cfg.size, progress=progress and acc.is_main_process)
    if acc.is_main_process:
        prepare_run_dir(run_dir, cfg, resume)
        atomic_write_json(
            run_dir / "run.json", {"data": str(Path(manifest).resolve()), "n_images": len(data), "k_sketches": data.k}
        )
    acc.wait_for_everyone()
    seed_everything(cfg.seed)
    trainer = AETrainer(cfg, len(data), acc, run_dir=run_dir)
    start = ckpt.resume_step(run_dir, trainer.load_state, resume)
    if acc.is_main_process:
        counts = acc.unwrap_model(trainer.model).parameter_counts()
        print(
            f"AE: {len(data)} images x {data.k} sketches, {cfg.size}px, "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            + f" params; dmi={cfg.dmi}, style={cfg.style_injection}; steps {start}->{cfg.steps}"
        )
    tb = _tensorboard(run_dir) if cfg.tensorboard and acc.is_main_process else None
    run_steps(
        acc,
        trainer,
        cfg,
        run_dir,
        start,
        desc="AE",
        step_fn=lambda step: trainer.step(data, step),
        sample_fn=lambda path: sample_grid(trainer, data, path),
        save_model=lambda: acc.unwrap_model(trainer.model).save_pretrained(run_dir / "model"),
        progress=progress,
        tensorboard=tb,
    )
    return run_dir


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise S2IError("tensorboard=true needs the tensorboard package: pip install tensorboard") from e
    return SummaryWriter(str(run_dir / "tensorboard"))
