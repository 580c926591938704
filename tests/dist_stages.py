"""Tiny trainers of the three stages, built identically by the distributed worker and by the test.

Not a test module: `tests/dist_worker.py` (under torchrun) and `tests/test_distributed.py`
(one process) both import it, so both sides train exactly the same networks on the same data.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from sketch2image.configs import AEConfig, GANConfig, TOMConfig
from sketch2image.data.paired import PairedData
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.options import LOSSES

GLOBAL_BATCH = 4
STEPS = 3


def paired(n: int = 12, k: int = 2, size: int = 32) -> PairedData:
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    sketches = (torch.rand(n, k, size, size, generator=g) > 0.1).to(torch.uint8) * 255
    return PairedData([f"i{i}" for i in range(n)], images, sketches)


def tiny_ae_config() -> AEConfig:
    return AEConfig(size=32, width=8, max_width=32, style_dim=16, content_res=8, batch_size=GLOBAL_BATCH, cls_k=8,
                    cls_every=2, **LOSSES["paper"])  # fmt: skip


def build(stage: str, acc: Accelerator):
    """(trainer, step_fn(step), named parameter tensors to compare)."""
    torch.manual_seed(0)
    if stage == "tom":
        from sketch2image.nets.vgg import load_vgg
        from sketch2image.train.tom import SketchStats, TOMTrainer, stroke_variants

        cfg = TOMConfig(size=32, g_width=8, g_max_width=16, d_forms=8, d_hidden=16, batch_size=GLOBAL_BATCH)
        vgg = load_vgg(cfg.vgg)
        real = (torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(5)) > 0.1).float()
        stats = SketchStats.compute(vgg, stroke_variants(real, cfg.stroke_variants), cfg)
        trainer = TOMTrainer(cfg, vgg, stats, acc)
        images = torch.rand(STEPS + 2, GLOBAL_BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(7))

        def step(i: int):
            return trainer.step(images[i - 1][trainer.rows], i)

        return trainer, step, lambda: {"g": acc.unwrap_model(trainer.g), "d": acc.unwrap_model(trainer.d)}
    data = paired()
    if stage == "ae":
        from sketch2image.train.ae import AETrainer

        trainer = AETrainer(tiny_ae_config(), data, acc)
        return (
            trainer,
            trainer.step,
            lambda: {
                "ae": acc.unwrap_model(trainer.model),
                "head": acc.unwrap_model(trainer.head),
            },
        )
    if stage == "gan":
        from sketch2image.train.gan import GANTrainer

        ae = SketchAutoEncoder(tiny_ae_config().model_config())
        # Noise off: it is the one thing drawn per rank on purpose (see train/distributed.py).
        cfg = GANConfig(width=8, max_width=16, levels=2, d_width=8, batch_size=GLOBAL_BATCH, noise=False)
        trainer = GANTrainer(cfg, ae, data, acc)
        return (
            trainer,
            trainer.step,
            lambda: {
                "g": acc.unwrap_model(trainer.g),
                "d": acc.unwrap_model(trainer.d),
                "g_ema": trainer.g_ema,
            },
        )
    raise ValueError(stage)


def flat(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone().contiguous() for n, m in modules.items() for k, v in m.state_dict().items()}
