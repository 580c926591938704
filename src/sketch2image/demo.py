"""The offline demo on built-in OpenMoji data: render → TOM → sketches → AE → GAN → export → grid.

Every stage writes into one folder and is skipped or resumed when its output is already
there, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sketch2image.configs import AEConfig, GANConfig, TOMConfig
from sketch2image.data.images import open_rgb, resize_square, to_tensor
from sketch2image.data.openmoji import read_record, render_openmoji
from sketch2image.figures import save_grid
from sketch2image.pipeline import Sketch2Image
from sketch2image.processing import stitch
from sketch2image.sketcher import TOMSketcher, sketch_folder
from sketch2image.storage import SKETCH_MANIFEST_FILE, folder_kind
from sketch2image.train.ae import train_ae
from sketch2image.train.gan import train_gan
from sketch2image.train.tom import train_tom


@dataclass
class DemoPreset:
    size: int
    limit: int | None  # OpenMoji emojis rendered (None: all)
    tom: TOMConfig
    ae: AEConfig
    gan: GANConfig


# The quick preset: all three stages at 64 px in under 20 minutes on 2 CPU cores.
DEMO = DemoPreset(
    size=64,
    limit=None,
    tom=replace(TOMConfig(), size=64),
    ae=AEConfig.preset(64, steps=1000, sample_every=200, checkpoint_every=200),
    gan=GANConfig(steps=500, sample_every=100, checkpoint_every=100),
)
FAST = DemoPreset(
    size=64,
    limit=400,
    tom=replace(TOMConfig(), size=64, steps=120, warmup=50, snapshot_every=7, sample_every=60, checkpoint_every=60),
    ae=AEConfig.preset(64, steps=100, batch_size=8, cls_k=64, cls_every=40, sample_every=50, checkpoint_every=50),
    gan=GANConfig(steps=50, batch_size=4, sample_every=25, checkpoint_every=25),
)


def _load(data: Path, sub: str, ids: list[str], size: int) -> torch.Tensor:
    return torch.stack([to_tensor(resize_square(open_rgb(data / sub / "test" / f"{i}.png"), size)) for i in ids])


def _spread(items: list[str], n: int, offset: int = 0) -> list[str]:
    step = max(1, len(items) // max(n, 1))
    return [items[(offset + i * step) % len(items)] for i in range(min(n, len(items)))]


def tom_figure(run: Path, data: Path, out: Path, n: int = 6, columns: tuple[int, ...] = (0, 4, 9)) -> Path:
    """Held-out emojis: colour image | the artist's line art | TOM sketches from three snapshots."""
    sketcher = TOMSketcher.from_pretrained(run)
    ids = _spread(read_record(data)["ids"]["test"], n)
    images, lines = _load(data, "images", ids, sketcher.cfg.size), _load(data, "lines", ids, sketcher.cfg.size)
    sketches = sketcher(images)
    cols = [c for c in columns if c < sketches.shape[1]]
    columns_ = [images, lines] + [sketches[:, c : c + 1].expand(-1, 3, -1, -1) for c in cols]
    return save_grid(out, list(torch.stack(columns_, 1)))  # one row per emoji


def result_grid(model: Sketch2Image, data: Path, out: Path, n_styles: int = 5) -> Path:
    """Rows: held-out emojis' own line art, then TOM sketches; columns: held-out style images.

    Then a style-mixing row (two styles stitched, then mixed as vectors at 3 weights) and a
    style-transfer row (held-out colour images → TOM sketch → painted in the first style).
    """
    test = read_record(data)["ids"]["test"]
    size = model.size
    style_ids, sketch_ids = _spread(test, n_styles, 1), _spread(test, 4, 3)
    styles = _load(data, "images", style_ids, size)
    real_lines = list(_load(data, "lines", sketch_ids, size))
    tom_src = _load(data, "images", _spread(test, 2, 7), size)
    tom_sketches = list(model.tom(tom_src, snapshot=0).expand(-1, 3, -1, -1)) if model.tom is not None else []
    blank = torch.ones(3, size, size)
    rows = [torch.stack([blank, *styles])]
    for sk in real_lines + tom_sketches:
        out_row = model.generate(sk[:1], list(styles)).stack()
        rows.append(torch.cat([sk[None], out_row]))
    sk0 = real_lines[0][:1]  # style mixing: the 2 styles stitched, then as vectors at weights 1/4, 1/2, 3/4
    outs = [model.mix(sk0, list(styles[:2]), mode="stitch").stack()]
    outs += [model.mix(sk0, list(styles[:2]), [1 - w, w], "vector").stack() for w in (0.25, 0.5, 0.75)]
    rows.append(torch.cat([stitch(styles[:2])[None], torch.cat(outs)]))
    if model.tom is not None:
        content = _load(data, "images", _spread(test, n_styles, 11), size)
        transferred = model.transfer(list(content), styles[0]).stack()
        rows.append(torch.cat([styles[0][None], transferred]))
        rows.append(torch.cat([blank[None], content]))
    return save_grid(out, rows)


def demo_preset(fast: bool = False, size: int | None = None) -> DemoPreset:
    """The demo's (or the fast smoke version's) settings, at another size if given: only the size and the
    AE's widths for it change, every other setting of the preset is kept."""
    p = FAST if fast else DEMO
    if size is not None:
        p = replace(p, size=size, tom=replace(p.tom, size=size), ae=p.ae.with_size(size))
    return p


def run_demo(out: Path, *, fast: bool = False, size: int | None = None, progress: bool = True) -> Path:
    p = demo_preset(fast, size)
    tag = "_fast" if fast else ""
    data = out / f"openmoji{p.size}{'_400' if p.limit else ''}"
    print(f"[1/6] rendering OpenMoji at {p.size}px -> {data}")
    render_openmoji(data, p.size, limit=p.limit, progress=progress)
    tom = out / f"tom{tag}"
    print(f"[2/6] training TOM ({p.tom.steps} steps, {p.tom.snapshots} snapshots) -> {tom}")
    train_tom(p.tom, data / "images" / "train", data / "sketch_set", tom, resume=True, progress=progress)
    sketches = out / f"sketches{tag}"
    print(f"[3/6] sketching the training emojis with every snapshot -> {sketches}")
    if not (sketches / SKETCH_MANIFEST_FILE).is_file():
        sketch_folder(tom, data / "images" / "train", sketches, progress=progress)
    ae = out / f"ae{tag}"
    print(f"[4/6] training the auto-encoder ({p.ae.steps} steps) -> {ae}")
    train_ae(p.ae, sketches / SKETCH_MANIFEST_FILE, ae, resume=True, progress=progress)
    gan = out / f"gan{tag}"
    print(f"[5/6] training the GAN refiner ({p.gan.steps} steps) -> {gan}")
    train_gan(p.gan, ae, sketches / SKETCH_MANIFEST_FILE, gan, resume=True, progress=progress)
    model_dir = out / f"model{tag}"
    print(f"[6/6] exporting the model -> {model_dir} and drawing the result grid")
    if folder_kind(model_dir) != "model":
        Sketch2Image.from_runs(ae, gan, tom).save_pretrained(
            model_dir, training_data=f"OpenMoji 17.0.0 ({'first 400 emojis' if p.limit else 'all'}), {p.size}px"
        )
    tom_figure(tom, data, out / f"tom_figure{tag}.png")
    return result_grid(Sketch2Image.from_pretrained(model_dir), data, out / f"demo_grid{tag}.png")
