"""Training loop for the self-supervised auto-encoder (paper §4.1, appendix A.1).

One step: augment the style input (affine warp) and two of the image's K sketches (masking,
thickening); reconstruct the untouched image from (augmented style, sketch); add the style
triplet, content triplet, momentum style classification and content MI terms, each switchable
by its weight. Reconstruction and triplets take consecutive batches of shuffled passes over the
whole set. The classifier head works on a subset of ``cls_k`` images (consecutive k-blocks of a
shuffled pass) that is relabelled and re-initialised every round (long enough for each image to
be seen ``cls_views`` times), on a second batch drawn from that subset; the content MI asks
per-level probes of the same classes, trained on the content itself, to find nothing.

Writes a run folder: ``config.json``, ``model/`` (``SketchAutoEncoder.save_pretrained``), ``checkpoints/``,
``samples/``, ``log.jsonl``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

from sketch2image.configs import AEConfig
from sketch2image.data.augment import affine_rand, mask_rand, mask_regions, random_affine, thicken
from sketch2image.data.paired import PairedData, PairedFiles, as_float, pairs_at
from sketch2image.errors import S2IError
from sketch2image.figures import save_grid
from sketch2image.losses import (
    content_triplet,
    refiner_rec,
    style_triplet,
    uniform_kl,
    uniform_prediction_loss,
)
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.storage import write_run_info
from sketch2image.train import checkpoint as ckpt
from sketch2image.train.common import adam, due, make_accelerator, prepare_run_dir, run_steps, seed_everything, speed_up
from sketch2image.train.distributed import check_shared, gather, load_pairs, local_rows
from sketch2image.train.feed import Feed, StepPlan, states, workers_for
from sketch2image.train.guard import FiniteGuard
from sketch2image.train.memory import MEMORY_ADVICE, check_memory, estimate


class ContentProbes(nn.Module):
    """One linear classifier per content level, of the round's classes from the average-pooled map.

    They learn on detached content (``forward``); the content MI term then asks their predictions, through
    detached weights, to be uniform (``mi``). A head that learns on the content itself finds class
    information wherever the pooled map holds it, where the style classifier applied to f_content can be
    fooled by a map that hides the class in that classifier's null space (k < style_dim).
    """

    def __init__(self, channels: list[int], k: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(c, k) for c in channels)

    def forward(self, content: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every level's head on detached content (the heads' own loss) and their accuracy.
        (``forward``, so that a DDP wrapper averages the heads' gradients.)"""
        losses, hits = [], []
        for head, f in zip(self.heads, content, strict=True):
            logits = head(f.detach().mean(dim=(2, 3)))
            losses.append(F.cross_entropy(logits, labels))
            hits.append((logits.detach().argmax(1) == labels).float().mean())
        return torch.stack(losses).mean(), torch.stack(hits).mean()

    def mi(self, content: list[torch.Tensor], form: str = "kl") -> torch.Tensor:
        """How far the heads' predictions from each level are from uniform (0: the content names no class)."""
        mi = uniform_kl if form == "kl" else uniform_prediction_loss
        return torch.stack([mi(F.linear(f.mean(dim=(2, 3)), h.weight.detach(), h.bias.detach()))
                            for h, f in zip(self.heads, content, strict=True)]).mean()  # fmt: skip


def _init_linear(layer: nn.Linear, g: torch.Generator) -> None:
    """torch's default uniform(±1/sqrt(fan_in)) initialisation, from a seeded generator."""
    with torch.no_grad():
        bound = 1 / math.sqrt(layer.in_features)
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) * 2 * bound - bound)


def stream(tag: str, *numbers: int) -> torch.Generator:
    """A generator seeded from a name and numbers (sha256): independent streams that cannot collide the way
    ``seed * a + p`` and ``seed * b + p`` do at seed 0."""
    digest = hashlib.sha256(":".join([tag, *map(str, numbers)]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def by_rank(rec: torch.Tensor, cls: torch.Tensor | None, world: int) -> torch.Tensor:
    """The global plan's row order when a step has two batches: each rank's reconstruction rows, then its
    classification rows, rank after rank, so one contiguous slice per rank holds both."""
    if cls is None or len(cls) == 0:
        return rec
    a, c = len(rec) // world, len(cls) // world
    return torch.cat([torch.cat([rec[q * a : (q + 1) * a], cls[q * c : (q + 1) * c]]) for q in range(world)])


class AETrainer(ckpt.Checkpointed):
    """Networks, optimisers, the momentum-classifier state, the data feed and one training step."""

    def __init__(
        self,
        cfg: AEConfig,
        data: PairedFiles | PairedData,
        accelerator: Accelerator,
        vgg: nn.Module | None = None,
        run_dir: Path | None = None,
    ):
        self.cfg, self.acc, self.data, self.n = cfg, accelerator, data, len(data)
        self.guard = FiniteGuard("AE", accelerator, run_dir)
        self.k = min(cfg.cls_k, self.n)
        if cfg.w_style_cls or cfg.w_content_mi:
            if self.k < cfg.batch_size:
                raise S2IError(
                    f"momentum classification needs cls_k >= batch_size; got {self.k} images per subset "
                    f"for batch {cfg.batch_size}"
                )
        model = SketchAutoEncoder(cfg.model_config()).gradient_checkpointing(cfg.grad_checkpoint)
        model = speed_up(model.to(accelerator.device), cfg, accelerator.device)
        head = nn.Linear(cfg.style_dim, self.k)
        channels = model.content_encoder.channels
        probes = ContentProbes(channels if cfg.content_levels == "all" else channels[-1:], self.k)
        opt = adam(model.parameters(), cfg.lr, (cfg.beta1, cfg.beta2))
        # The probes exist only where they are used, so that runs without them keep their checkpoint layout.
        self.use_probes = bool(cfg.w_content_mi) and cfg.mi_probe == "probe"
        head_params = [*head.parameters(), *(probes.parameters() if self.use_probes else [])]
        opt_head = adam(head_params, cfg.lr * cfg.cls_lr_mult, (cfg.beta1, cfg.beta2))
        self.model, self.head, self.probes, self.opt, self.opt_head = accelerator.prepare(
            model, head, probes.to(accelerator.device), opt, opt_head
        )
        if cfg.w_perceptual and vgg is None:  # the optional perceptual term needs the pretrained VGG-19
            from sketch2image.nets.vgg import load_vgg

            vgg = load_vgg().to(accelerator.device)
        self.vgg = vgg
        self.round = -1
        self.subset = torch.arange(self.k)
        # A round lasts until each of its k images has been seen about cls_views times (or cls_every steps).
        self.round_steps = cfg.cls_every or math.ceil(cfg.cls_views * self.k / cfg.batch_size)
        self.round_acc: list[float] = []  # the head's batch accuracy, this round
        self.norms_at = 0  # the last step whose gradient norms were logged
        # Seeded alike on every rank: each rank plans the same global batch and augmentation and loads
        # its own rows (train/feed.py, train/distributed.py), so the run does not depend on the number
        # of processes. With sampling=epoch and a classifier, a step has two batches: reconstruction rows
        # from the whole set and classification rows from the round's subset (``by_rank`` lays them out).
        self.two_batches = cfg.two_batches
        b_cls = cfg.batch_size if self.two_batches else 0
        self.rows = local_rows(accelerator, cfg.batch_size + b_cls)
        self.rec_rows = local_rows(accelerator, cfg.batch_size)
        self.cls_rows = local_rows(accelerator, b_cls) if b_cls else self.rec_rows
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 7 + 1)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 7 + 2)
        self.feed = Feed(data, self.planner, {"data_gen": self.data_gen, "aug_gen": self.aug_gen}, self.rows,
                         last=cfg.steps, device=accelerator.device, num_workers=cfg.num_workers)  # fmt: skip

    @property
    def uses_classes(self) -> bool:
        return self.cfg.uses_classes

    def pass_order(self, p: int) -> torch.Tensor:
        """Pass ``p`` over the data set: a permutation of all n images from its own seed (no state to resume)."""
        return torch.randperm(self.n, generator=stream("passes", self.cfg.seed, p))

    def epoch_rows(self, step: int, orders: dict[int, torch.Tensor]) -> torch.Tensor:
        """The reconstruction batch of ``step``: the next ``batch_size`` images of consecutive shuffled passes,
        so every image is seen once per pass whatever else the run does."""
        b = self.cfg.batch_size
        pos = torch.arange((step - 1) * b, step * b)
        passes, within = pos // self.n, pos % self.n
        for p in passes.unique().tolist():
            if p not in orders:
                orders[p] = self.pass_order(p)
        rows = torch.stack([orders[p][w] for p, w in zip(passes.tolist(), within.tolist(), strict=True)])
        for old in [q for q in orders if q < int(passes[-1])]:  # later batches start in the last pass
            del orders[old]
        return rows

    def round_draw(self, round_: int) -> tuple[torch.Tensor, torch.Generator]:
        """A round's subset of k images, and the generator that then initialises its heads.

        epoch: consecutive k-blocks of a shuffled pass (the last block ends at the pass's end), so every image
        is in a subset once per ceil(n / k) rounds; subset: k images drawn independently every round."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + round_)
        if self.cfg.sampling == "subset":
            return torch.randperm(self.n, generator=g)[: self.k], g
        blocks = math.ceil(self.n / self.k)
        p, j = divmod(round_, blocks)
        order = torch.randperm(self.n, generator=stream("subsets", self.cfg.seed, p))
        start = min(j * self.k, self.n - self.k)
        return order[start : start + self.k], g

    def start_round(self, round_: int) -> None:
        """New subset of k images, labels = their position in it, fresh heads and head optimiser."""
        self.round = round_
        self.subset, g = self.round_draw(round_)
        _init_linear(self.acc.unwrap_model(self.head), g)
        for layer in self.acc.unwrap_model(self.probes).heads:
            _init_linear(layer, g)
        self.opt_head.state.clear()
        self.round_acc = []

    def planner(self, gens: dict[str, torch.Generator]):
        """The plan of every step (``train/feed.py``): indices and class labels from ``data_gen`` (and the
        passes' own seeds), the augmentation's random numbers and each row's sketches from ``aug_gen``."""
        cfg, b, k_sk = self.cfg, self.cfg.batch_size, self.data.k
        data_gen, aug_gen = gens["data_gen"], gens["aug_gen"]
        subsets: dict[int, torch.Tensor] = {}
        orders: dict[int, torch.Tensor] = {}
        masks = cfg.mask_regions > 0 and cfg.mask_max_frac > 0
        world = self.acc.num_processes

        def plan(step: int) -> StepPlan:
            rand: dict = {}
            cls_index = None
            if self.uses_classes:
                r = (step - 1) // self.round_steps
                if r not in subsets:
                    subsets.clear()
                    subsets[r] = self.round_draw(r)[0]
                pos = torch.randperm(self.k, generator=data_gen)[:b]
                rand["labels"], rand["round"] = pos, r
                if self.two_batches:
                    index, cls_index = self.epoch_rows(step, orders), subsets[r][pos]
                else:
                    index = subsets[r][pos]
            elif cfg.sampling == "epoch":
                index = self.epoch_rows(step, orders)
            else:
                index = torch.randperm(self.n, generator=data_gen)[:b]
            rand["affine"] = affine_rand(b, aug_gen)
            pick = torch.randint(k_sk, (b,), generator=aug_gen)
            other = (pick + torch.randint(1, max(k_sk, 2), (b,), generator=aug_gen)) % k_sk  # another when K > 1
            if masks:
                rand["mask"] = mask_rand(b, cfg.mask_regions, aug_gen)
            if cfg.thicken_p > 0:
                rand["thick"] = torch.rand(b, generator=aug_gen)
            if cfg.w_content_triplet and masks:
                rand["mask_pos"] = mask_rand(b, cfg.mask_regions, aug_gen)
            picks = torch.stack([pick, other], 1) if cfg.w_content_triplet else pick[:, None]
            cls_picks = None
            if cls_index is not None:  # the classification rows: an augmented view and one sketch each
                rand["cls_affine"] = affine_rand(b, aug_gen)
                cls_pick = torch.randint(k_sk, (b,), generator=aug_gen)
                cls_picks = cls_pick[:, None].expand(-1, picks.shape[1])
            return StepPlan(step, by_rank(index, cls_index, world), by_rank(picks, cls_picks, world), rand,
                            states(gens))  # fmt: skip

        return plan

    def losses(self, images: torch.Tensor, sketches: torch.Tensor, plan: StepPlan) -> dict[str, torch.Tensor]:
        """Every enabled loss term for this rank's rows of a step (images (b,3,S,S), sketches (b,n,1,S,S):
        the plan's picks), augmented with the plan's random numbers."""
        cfg, loc = self.cfg, self.rec_rows
        lr = loc.stop - loc.start
        images, sketches, cls_images, cls_sketches = images[:lr], sketches[:lr], images[lr:], sketches[lr:]

        def rand(name: str, rows: slice = loc) -> torch.Tensor | None:
            return plan.rand[name][rows] if name in plan.rand else None

        def augment(x: torch.Tensor, name: str) -> torch.Tensor:
            return random_affine(x, max_rotate=cfg.aug_max_rotate, min_scale=cfg.aug_min_scale,
                                 max_scale=cfg.aug_max_scale, max_shift=cfg.aug_max_shift,
                                 rand=rand(name, self.cls_rows if name == "cls_affine" else loc))  # fmt: skip

        def masked(j: int, name: str) -> torch.Tensor:
            return mask_regions(sketches[:, j].contiguous(), regions=cfg.mask_regions, max_frac=cfg.mask_max_frac,
                                rand=rand(name))  # fmt: skip

        skt_t = thicken(masked(0, "mask"), cfg.thicken_p, rand=rand("thick"))
        skt_pos = masked(1, "mask_pos") if cfg.w_content_triplet else None
        two = self.two_batches
        res = self.model(
            skt_t,
            augment(images, "affine"),
            original=images if cfg.w_style_triplet else None,
            other_sketch=skt_pos,
            cls_style=augment(cls_images, "cls_affine") if two else None,
            cls_sketch=cls_sketches[:, 0].contiguous() if two and cfg.w_content_mi else None,
            features=True,
        )
        out, f_style, content = res["out"], res["f_style"], res["content"]
        levels = range(len(content)) if cfg.content_levels == "all" else [len(content) - 1]
        terms: dict[str, torch.Tensor] = {"rec": refiner_rec(out, images, cfg.rec_form)}
        if cfg.w_perceptual:
            layers = ["relu1_2", "relu2_2", "relu3_1"]
            fo, fi = self.vgg(out, layers), self.vgg(images, layers)
            terms["perceptual"] = sum(F.mse_loss(fo[n], fi[n]) for n in layers) / len(layers)
        if cfg.w_style_triplet:
            f_org = res["f_org"]
            negatives = gather(self.acc, f_org).roll(1, 0)[loc]  # another image of the *global* batch
            terms["style_triplet"] = style_triplet(f_style, f_org, negatives, cfg.style_margin)
        if cfg.w_content_triplet:
            per_level = []
            for i in levels:
                f_pos = res["f_pos"][i]
                negatives = gather(self.acc, f_pos).roll(1, 0)[loc]
                per_level.append(content_triplet(content[i], f_pos, negatives, cfg.content_margin))
            terms["content_triplet"] = torch.stack(per_level).mean()
        if self.uses_classes:
            # The head always learns the round's classes, so the MI term never measures a random head; the
            # style encoder learns from it only when w_style_cls > 0 (otherwise the head sees detached styles).
            f_cls = res["f_cls"] if two else f_style
            labels = plan.rand["labels"][self.cls_rows].to(images.device)
            logits = self.head(f_cls if cfg.w_style_cls else f_cls.detach())
            terms["style_cls" if cfg.w_style_cls else "cls_head"] = F.cross_entropy(logits, labels)
            self.batch_acc = (logits.detach().argmax(1) == labels).float().mean()
        if cfg.w_content_mi:
            c_cls = res["content_cls"] if two else content
            if cfg.mi_probe == "probe":
                chosen = [c_cls[i] for i in levels]
                terms["mi_probe"], self.probe_acc = self.probes(chosen, labels)
                terms["content_mi"] = self.acc.unwrap_model(self.probes).mi(chosen, cfg.content_mi_form)
            else:
                head = self.acc.unwrap_model(self.head)
                pooled = c_cls[-1].mean(dim=(2, 3))  # average-pooled to the style vector's size
                mi = uniform_kl if cfg.content_mi_form == "kl" else uniform_prediction_loss
                terms["content_mi"] = mi(F.linear(pooled, head.weight.detach(), head.bias.detach()))
        return terms

    WEIGHTLESS = ("cls_head", "mi_probe")  # the heads' own losses on detached features: weight 1, no encoder

    def weights(self) -> dict[str, float]:
        c = self.cfg
        return {"rec": c.w_rec, "perceptual": c.w_perceptual, "style_triplet": c.w_style_triplet,
                "content_triplet": c.w_content_triplet, "style_cls": c.w_style_cls, "content_mi": c.w_content_mi,
                **dict.fromkeys(self.WEIGHTLESS, 1.0)}  # fmt: skip

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.weights()
        return sum(weights[name] * value for name, value in terms.items())

    def gradient_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each weighted term's gradient norm on E_style and on E_content: which term drives a shared encoder.

        One extra backward per term, so only at a logged step at least ``grad_norm_every`` steps after the
        last, and only in one process (a DDP-wrapped model must see exactly one backward per forward)."""
        m = self.acc.unwrap_model(self.model)
        parts = {"E_style": list(m.style_encoder.parameters()), "E_content": list(m.content_encoder.parameters())}
        weights, out = self.weights(), {}
        scaler = getattr(self.acc, "scaler", None)  # fp16: norms of the scaled loss, unscaled (no underflow)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        for name, value in terms.items():
            if name in self.WEIGHTLESS or not value.requires_grad:
                continue
            for part, params in parts.items():
                grads = torch.autograd.grad(weights[name] * value * scale, params, retain_graph=True,
                                            allow_unused=True)  # fmt: skip
                sq = sum(g.float().pow(2).sum() for g in grads if g is not None)
                out[f"gn_{part}_{name}"] = float(sq) ** 0.5 / scale if torch.is_tensor(sq) else 0.0
        return out

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, StepPlan]:
        """This rank's rows of step ``step`` on the device (images, the plan's sketches) and the plan;
        a new classifier round starts here."""
        batch, plan = self.feed.next(step)
        if self.uses_classes and plan.rand["round"] != self.round:
            self.start_round(plan.rand["round"])
        return (*as_float(batch, self.acc.device), plan)

    def step(self, step: int) -> dict[str, float]:
        self.guard.step = step
        images, sketches, plan = self.batch(step)
        self.model.train()
        with self.acc.autocast():
            terms = self.losses(images, sketches, plan)
            loss = self.total(terms)
        every = self.cfg.grad_norm_every
        logged = due(step, self.cfg.log_every, self.cfg.steps)
        due_now = every and logged and step - self.norms_at >= every and self.acc.num_processes == 1
        norms = self.gradient_norms(terms) if due_now else {}
        self.norms_at = step if due_now else self.norms_at
        # The heads learn from their own losses only (the MI term uses them detached).
        opts = [self.opt, self.opt_head] if self.uses_classes else [self.opt]
        params = [*self.model.parameters(), *self.head.parameters(), *self.probes.parameters()]
        self.guard.update(opts, loss, params, {**terms, "loss": loss}, "the AE", self.cfg.max_grad_norm)
        grad = self.guard.end_step()["the AE"]
        out = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, "grad": grad, **norms}
        if self.uses_classes:  # the head's accuracy over the round's recent batches (chance: 1/k)
            self.round_acc.append(self.batch_acc.item())
            out["cls_acc"] = sum(self.round_acc[-20:]) / len(self.round_acc[-20:])
            if "mi_probe" in terms:  # how well the content alone names the class (chance: 1/k)
                out["probe_acc"] = self.probe_acc.item()
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
        return {**tensors, "subset": self.subset.clone()}, {**meta, "round": self.round, "round_acc": self.round_acc}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, source: str) -> None:
        super().load_state(tensors, meta, source)
        self.subset, self.round = tensors["subset"], meta["round"]
        self.round_acc = list(meta.get("round_acc", []))  # the logged accuracy averages the round's batches
        self.feed.expect = None  # the next step plans again from the loaded generators

    def _parts(self) -> tuple[dict, dict, dict]:
        modules = {"ae": self.model, "head": self.head, **({"probes": self.probes} if self.use_probes else {})}
        optimizers = {"opt": self.opt, "opt_head": self.opt_head}
        return modules, optimizers, {"data_gen": self.data_gen, "aug_gen": self.aug_gen}


def sample_grid(trainer: AETrainer, path: Path, n: int = 6) -> Path:
    """Rows: sketch | its own image as style | output | a mismatched style | output."""
    data = trainer.data
    idx = torch.linspace(0, len(data) - 1, min(n, len(data))).long().tolist()
    images, sketches = pairs_at(data, idx, (0,), trainer.acc.device)
    sk = sketches[:, 0]
    other = images.roll(1, 0)
    return save_grid(path, [sk, images, trainer.generate(sk, images), other, trainer.generate(sk, other)])


def train_ae(cfg: AEConfig, manifest: Path, run_dir: Path, *, resume: bool = True, progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    acc = make_accelerator(cfg.mixed_precision)
    data = load_pairs(acc, manifest, cfg.size)
    with torch.device("meta"):  # sizes only: nothing is allocated
        counts = SketchAutoEncoder(cfg.model_config()).parameter_counts()
    need = estimate(
        sum(counts.values()),
        0,
        cfg.width,
        cfg.size,
        cfg.batch_size * (2 if cfg.two_batches else 1) // acc.num_processes,  # the classification rows too
        workers_for(cfg.num_workers),
        3 + (2 if cfg.w_content_triplet else 1),
        cfg.mixed_precision != "no",
    )
    check_memory("AE", need, acc.device, MEMORY_ADVICE)  # fmt: skip
    if acc.is_main_process:
        prepare_run_dir(run_dir, cfg, resume)
        write_run_info(run_dir, "ae", data=Path(manifest), n_images=len(data), k_sketches=data.k)
    acc.wait_for_everyone()
    check_shared(acc, run_dir)
    seed_everything(cfg.seed)
    trainer = AETrainer(cfg, data, acc, run_dir=run_dir)
    start = ckpt.resume_step(run_dir, trainer.load_state, resume, acc)
    if acc.is_main_process:
        print(
            f"AE: {len(data)} images x {data.k} sketches, {cfg.size}px, "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            + f" params; dmi={cfg.dmi}, style={cfg.style_injection}; steps {start}->{cfg.steps}"
        )
    try:
        run_steps(
            acc,
            trainer,
            cfg,
            run_dir,
            start,
            desc="AE",
            step_fn=trainer.step,
            sample_fn=lambda path: sample_grid(trainer, path),
            save_model=lambda: acc.unwrap_model(trainer.model).save_pretrained(run_dir / "model"),
            progress=progress,
        )
    finally:
        trainer.feed.close()
    return run_dir
