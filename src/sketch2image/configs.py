"""One config dataclass per stage, each of one shape: its network's settings + ``RunConfig`` + how it is trained.

Configs are saved as JSON beside the weights; loading one checks its keys and values so a run
folder from another version, or a typo in an override, fails with a message instead of a
silently different model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from sketch2image.errors import CheckpointError, S2IError
from sketch2image.nets.autoencoder import AutoEncoderConfig
from sketch2image.nets.refiner import RefinerConfig, RefinerLayout
from sketch2image.nets.tom import SketchGeneratorConfig
from sketch2image.nets.vgg import LAYER_NAMES
from sketch2image.storage import Checked, from_dict, known_fields, to_dict

T = TypeVar("T")


@dataclass
class RunConfig(Checked):
    """How a stage is run: the same fields, meanings and checks for TOM, the AE and the GAN (each stage
    restates only its defaults). ``*_every`` = 0: only at the last step."""

    batch_size: int = 8  # the global batch (split over processes)
    steps: int = 1000
    seed: int = 0
    beta1: float = 0.5
    beta2: float = 0.999
    max_grad_norm: float = 0.0  # clip each network's gradient norm to this (0: no clipping; the norm is logged)
    sample_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2  # 0 keeps the latest too
    log_every: int = 10
    num_workers: int = -1  # DataLoader workers per process; -1: from the CPU count (train/feed.py)
    tensorboard: bool = False  # also write the logged values for TensorBoard (run folder's tensorboard/)
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (Accelerate)
    compile: bool = False  # torch.compile the trained networks (in place; checkpoints unchanged)
    channels_last: bool = True  # NHWC memory layout on CUDA (ignored on CPU)

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.steps < 1 or self.batch_size < 1 or self.seed < 0:
            problems.append(f"steps and batch_size must be >= 1 and seed >= 0 (got {self.steps}, {self.batch_size}, "
                            f"{self.seed})")  # fmt: skip
        for name in ("sample_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} {getattr(self, name)} must be >= 0 (0: only at the last step)")
        if self.keep_checkpoints < 0:
            problems.append(f"keep_checkpoints {self.keep_checkpoints} must be >= 0 (0 keeps the latest, as 1)")
        if self.num_workers < -1:
            problems.append(f"num_workers {self.num_workers} must be >= 0, or -1 for the CPU count")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            problems.append(f"beta1 {self.beta1} and beta2 {self.beta2} must be in [0, 1)")
        if not self.max_grad_norm >= 0:  # NaN too
            problems.append(f"max_grad_norm {self.max_grad_norm} must be >= 0 (0: no clipping)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            problems.append(f"mixed_precision {self.mixed_precision!r} must be no, bf16 or fp16")
        return problems


def _positive(cfg: Any, *names: str) -> list[str]:
    """Learning rates and multipliers: > 0 (and finite)."""
    return [f"{n} {getattr(cfg, n)} must be > 0" for n in names if not 0 < getattr(cfg, n) < float("inf")]


def _non_negative(cfg: Any, *names: str) -> list[str]:
    """Loss weights and margins: >= 0 (0 switches a term off) and finite."""
    return [f"{n} {getattr(cfg, n)} must be >= 0" for n in names if not 0 <= getattr(cfg, n) < float("inf")]


@dataclass
class TOMConfig(SketchGeneratorConfig, RunConfig):
    """Stage 1: sketch synthesis (paper §3). Defaults are the 128 px CPU-friendly preset."""

    KIND: ClassVar[str] = "TOM config"
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"d_norm": "none"}  # runs started before ``d_norm`` existed

    size: int = 128
    gram_layers: list[str] = field(default_factory=lambda: ["relu1_1", "relu2_1", "relu3_1"])
    d_forms: int = 128
    d_hidden: int = 256
    d_norm: str = "spectral"  # "spectral": unit projections + spectrally normalised MLP; "none": the first D
    vgg: str = "normalised"  # "normalised", "torchvision" or a weight-file path
    gan_loss: str = "bce"  # "bce" (paper Eq. 5) or "hinge"
    w_adv: float = 1.0
    w_feat: float = 1.0
    w_gram: float = 0.0  # optional Gram matching to the re-matched real sketches
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    steps: int = 520
    # Multiple transfers: K generator snapshots, every `snapshot_every` steps after `warmup`.
    snapshots: int = 10
    warmup: int = 200
    snapshot_every: int = 35
    # Variation between snapshots: before each snapshot the real-sketch targets come from one
    # random subset (this fraction of S) of one stroke-weight variant of S. 1.0 and
    # stroke_variants=False give the paper's plain schedule.
    snapshot_focus: float = 0.35
    stroke_variants: bool = True
    hflip: bool = True
    sample_every: int = 100
    checkpoint_every: int = 100
    num_workers: int = 0

    def problems(self) -> list[str]:
        problems = super().problems()
        problems += [f"gram layer {g!r} not in {LAYER_NAMES}" for g in self.gram_layers if g not in LAYER_NAMES]
        if self.size < 16 or self.size % 16:
            problems.append(f"size {self.size} must be a multiple of 16 and >= 16")
        if self.d_norm not in ("spectral", "none"):
            problems.append(f"d_norm {self.d_norm!r} must be 'spectral' or 'none'")
        if self.gan_loss not in ("bce", "hinge"):
            problems.append(f"gan_loss {self.gan_loss!r} must be 'bce' or 'hinge'")
        if not 0.0 < self.snapshot_focus <= 1.0:
            problems.append(f"snapshot_focus {self.snapshot_focus} must be in (0, 1]")
        if self.d_forms < 1 or self.d_hidden < 1:
            problems.append("d_forms and d_hidden must be >= 1")
        problems += _positive(self, "lr_g", "lr_d") + _non_negative(self, "w_adv", "w_feat", "w_gram")
        if self.snapshots < 1 or self.snapshot_every < 1 or self.warmup < 0:
            problems.append("snapshots and snapshot_every must be >= 1, warmup >= 0")
        else:
            last = self.warmup + (self.snapshots - 1) * self.snapshot_every
            if last > self.steps:
                problems.append(
                    f"the last snapshot falls at step {last} > steps {self.steps}: "
                    "raise steps or lower warmup/snapshot_every/snapshots"
                )
        return problems

    def snapshot_steps(self) -> list[int]:
        return [self.warmup + i * self.snapshot_every for i in range(self.snapshots)]


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """``key=value`` strings from the command line, parsed as JSON where possible."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise S2IError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        if key not in data:
            raise S2IError(f"unknown option {key!r}; known: {', '.join(sorted(data))}")
        if isinstance(data[key], list) and isinstance(val, str):
            val = [v.strip() for v in val.split(",") if v.strip()]
        data[key] = val
    try:
        return from_dict(type(cfg), data, "command line")
    except CheckpointError as e:
        raise S2IError(str(e)) from e


# Width per resolution preset: channels at full resolution; they double per halving, capped at 512,
# so every preset from 128 px up has 512 channels at the 8x8 content map (the paper's 512x8x8) and
# about 22 M parameters; what grows with the size is only the cheap high-resolution part.
AE_PRESETS: dict[int, dict[str, int]] = {
    64: {"width": 32},
    128: {"width": 32},
    256: {"width": 16},
    512: {"width": 8},
    1024: {"width": 4},
}


@dataclass
class AEConfig(AutoEncoderConfig, RunConfig):
    """Stage 2: the self-supervised auto-encoder (paper §4.1, appendix A). Defaults: the 64 px preset.

    The network's settings (size, arch, widths, dmi, style injection, ...) are the fields it inherits
    from ``AutoEncoderConfig``, how it is run those of ``RunConfig``; the fields below are how it is trained.
    """

    KIND: ClassVar[str] = "AE config"

    # What configs written before a key existed meant by leaving it out.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "arch": "classic",
        "content_mi_form": "mse",
        "rec_form": "mse",
        "sampling": "subset",
        "content_levels": "last",
        "mi_probe": "style_head",
    }

    # Loss weights; 0 switches a term off. The paper's four self-supervised terms are off by default
    # (reconstruction with Feat-DMI only): on 64 px faces, two seeds each, none of them lowered FID or the
    # perceptual distance beyond the seed spread, each part made one of the two worse beyond it, and all four
    # together took 2.3x the time per step (docs/BENCHMARKS.md). ``options.LOSSES["paper"]``
    # (``s2i ae train --losses paper``) switches them on at the weights tuned for gradient balance.
    w_rec: float = 1.0
    w_perceptual: float = 0.0  # optional VGG perceptual term, off in the paper-faithful preset
    w_style_triplet: float = 0.0
    w_content_triplet: float = 0.0
    w_style_cls: float = 0.0
    w_content_mi: float = 0.0
    style_margin: float = 0.5  # α, on cosine similarities
    content_margin: float = 1.0  # β, on mean-squared distances of standardised content maps
    cls_k: int = 256  # images per momentum-classification subset (500-2000 at full scale)
    # A round (one subset, its labels, one fresh head) lasts until each of its images has been seen
    # about cls_views times: ceil(cls_views * k / batch_size) steps. cls_every > 0 fixes it instead.
    cls_views: int = 24
    cls_every: int = 0
    cls_lr_mult: float = 10.0  # learning-rate multiplier of the freshly initialised head
    content_mi_form: str = "kl"  # kl: KL(p || uniform) in nats; mse: the paper's ||p - 1/k||^2 (tiny at large k)
    # Eq. 12's ||.||^2 read as in the refiner (Eq. 14): rgb, each pixel's colour distance in [-1, 1], averaged
    # over pixels; mse: the per-element mean on [0, 1] (a twelfth of it).
    rec_form: str = "rgb"
    # epoch: reconstruction and triplets on consecutive batches of shuffled passes over the whole set, the
    # classification on a second batch from the round's subset (consecutive k-blocks of a shuffled pass);
    # subset: every batch from the round's subset of k random images (before the ablation found it unfair).
    sampling: str = "epoch"
    # Content triplet and MI on every content map that reaches the decoder (all), or on f_content only (last).
    content_levels: str = "all"
    # The MI's classifier: probe, a linear head per content level trained on the (detached) content itself, so
    # class information anywhere in the pooled map is found; style_head: the style classifier applied to f_content
    # (the paper's reading; with k < style_dim the content can hide the class in that head's null space).
    mi_probe: str = "probe"
    grad_norm_every: int = 100  # log each term's gradient norm on E_style, E_content at logged steps this far apart
    # Augmentation of the style input (batched affine warp) and of the sketch input (masking).
    aug_max_rotate: float = 15.0
    aug_min_scale: float = 0.8
    aug_max_scale: float = 1.2
    aug_max_shift: float = 0.15
    mask_regions: int = 4
    mask_max_frac: float = 0.2
    thicken_p: float = 0.25
    lr: float = 2e-4
    batch_size: int = 16
    steps: int = 2000
    grad_checkpoint: bool = False  # recompute decoder/encoder blocks in backward: less memory at 1024 px

    @property
    def uses_classes(self) -> bool:
        """The momentum classifier runs (for its own term or for the content MI)."""
        return bool(self.w_style_cls or self.w_content_mi)

    @property
    def two_batches(self) -> bool:
        """A step loads a second, classification batch from the round's subset."""
        return self.uses_classes and self.sampling == "epoch"

    def problems(self) -> list[str]:
        problems = super().problems()  # the network's settings, then how it is run
        if self.cls_k < 2 or self.cls_every < 0 or self.cls_views < 1 or self.batch_size < 2:
            problems.append("cls_k and batch_size must be >= 2, cls_views >= 1, cls_every >= 0 (0: from cls_views)")
        for name, allowed in (("rec_form", ("rgb", "mse")), ("sampling", ("epoch", "subset")),
                              ("content_levels", ("all", "last")), ("mi_probe", ("probe", "style_head")),
                              ("content_mi_form", ("kl", "mse"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r} must be one of {', '.join(allowed)}")
        if self.grad_norm_every < 0:
            problems.append(f"grad_norm_every {self.grad_norm_every} must be >= 0 (0: never)")
        problems += _positive(self, "lr", "cls_lr_mult")
        problems += _non_negative(self, "w_rec", "w_perceptual", "w_style_triplet", "w_content_triplet",
                                  "w_style_cls", "w_content_mi", "style_margin", "content_margin",
                                  "aug_max_rotate", "aug_max_shift", "mask_regions")  # fmt: skip
        if not 0 < self.aug_min_scale <= self.aug_max_scale:
            problems.append(f"aug_min_scale {self.aug_min_scale} and aug_max_scale {self.aug_max_scale}: need "
                            "0 < min <= max")  # fmt: skip
        problems += [f"{n} {getattr(self, n)} must be in [0, 1]" for n in ("mask_max_frac", "thicken_p")
                     if not 0 <= getattr(self, n) <= 1]  # fmt: skip
        return problems

    @classmethod
    def preset(cls, size: int, **overrides: Any) -> AEConfig:
        return cls().with_size(size, **overrides)

    def with_size(self, size: int, **overrides: Any) -> AEConfig:
        """This config at another resolution preset (its widths), every other setting kept."""
        if size not in AE_PRESETS:
            raise S2IError(f"no AE preset for {size}px; presets: {sorted(AE_PRESETS)}")
        return dataclasses.replace(self, size=size, **{**AE_PRESETS[size], **overrides})


# G2 per AE size (lean layout): the bottleneck at 8-16 px, and the full-resolution width shrinking
# with the size so that every level costs about the same.
GAN_PRESETS: dict[int, dict[str, int]] = {
    64: {"width": 32, "levels": 3},
    128: {"width": 16, "levels": 4},
    256: {"width": 16, "levels": 5},
    512: {"width": 8, "levels": 5},
    1024: {"width": 8, "levels": 6},
}


@dataclass
class GANConfig(RefinerLayout, RunConfig):
    """Stage 3: the GAN refiner (paper §4.2, appendix A.4). Size and style size come from the frozen AE;
    G2's layout is ``RefinerLayout``'s fields, how it is run ``RunConfig``'s."""

    KIND: ClassVar[str] = "GAN config"
    # What configs written before a key existed meant by leaving it out.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"arch": "classic", "ema_ramp": False, "rec_form": "mse"}

    width: int = 0  # G2 channels at full resolution (doubling per halving, <= max_width); 0: GAN_PRESETS
    levels: int = 0  # encoder-decoder depth: the bottleneck is size / 2**levels; 0: GAN_PRESETS
    d_width: int = 32
    d_layers: int = 3  # stride-2 convolutions in the patch discriminator
    w_rec: float = 10.0  # λ of paper Eq. 14
    # ‖G2(I_ae) − I‖² of Eq. 14: ``rgb`` is the squared colour distance per pixel in the [−1, 1] range the
    # discriminator sees (12x a per-element MSE on [0, 1] images); ``mse`` (runs made before the key
    # existed) is the per-element MSE on [0, 1], under which λ = 10 lets the adversarial term paint
    # saturated speckle over the AE output.
    rec_form: str = "rgb"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.99
    ema_decay: float = 0.999
    ema_ramp: bool = True  # decay min(ema_decay, (1+t)/(10+t)) at step t: the EMA follows G2 from the start
    grad_checkpoint: bool = False

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.levels < 0 or self.width < 0 or self.d_layers < 1 or self.d_width < 1:
            problems.append("d_layers and d_width must be >= 1, levels and width >= 0 (0: the size's preset)")
        if self.rec_form not in ("rgb", "mse"):
            problems.append(f"rec_form {self.rec_form!r} must be rgb or mse")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay {self.ema_decay} must be in [0, 1)")
        problems += _positive(self, "lr_g", "lr_d") + _non_negative(self, "w_rec")
        return problems

    def for_size(self, size: int) -> GANConfig:
        """``width``/``levels`` left at 0 filled from the preset of the AE's image size."""
        if self.width and self.levels:
            return self
        if size not in GAN_PRESETS:
            raise S2IError(f"no refiner preset for {size}px (presets: {sorted(GAN_PRESETS)}); set width and levels")
        preset = GAN_PRESETS[size]
        return dataclasses.replace(self, width=self.width or preset["width"], levels=self.levels or preset["levels"])

    def model_config(self, size: int, style_dim: int) -> RefinerConfig:
        """G2's settings for an auto-encoder of this image size and style vector size."""
        cfg = self.for_size(size)
        return RefinerConfig(**known_fields(RefinerConfig, to_dict(cfg)), style_dim=style_dim)
