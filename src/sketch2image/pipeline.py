"""``Sketch2Image``: load a complete trained model in one call and use it.

A model folder (made by ``s2i export``) holds ``sketch2image.json`` (format, version, what it
was trained on), ``ae/`` (the auto-encoder), optionally ``refiner/`` (the EMA GAN refiner) and
``tom/`` (TOM snapshots, needed for ``transfer``), and a ``README.md`` model card.

Inputs may be paths, PIL images or tensors. Sketches of any size and aspect are normalised:
alpha composited on white, colour turned grey, white-on-black inverted, padded (not
stretched) to a square, resized to the model's size.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sketch2image import __version__
from sketch2image.data.images import as_rgb, open_rgb, resize_square, to_tensor
from sketch2image.errors import CheckpointError, InputError
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.refiner import Refiner
from sketch2image.sketcher import TOMSketcher
from sketch2image.train.ae import from_pretrained as load_ae
from sketch2image.train.checkpoint import atomic_write_json
from sketch2image.train.gan import load_refiner

MODEL_FORMAT = "sketch2image.model/1"
ImageLike = str | os.PathLike | Image.Image | torch.Tensor


def _as_pil(item: ImageLike) -> Image.Image:
    if isinstance(item, (str, os.PathLike)):
        return open_rgb(item)
    if isinstance(item, Image.Image):
        return as_rgb(item)
    raise TypeError(f"expected a path or PIL image, got {type(item).__name__}")


def normalize_sketch(item: ImageLike, size: int, name: str = "sketch") -> torch.Tensor:
    """Any sketch → (1, size, size) grey in [0, 1], dark lines on white, padded to a square."""
    if isinstance(item, torch.Tensor):
        t = item.float()
        t = t.mean(0, keepdim=True) if t.dim() == 3 and t.shape[0] in (3, 4) else t.reshape(1, *t.shape[-2:])
        arr = (t[0].clamp(0, 1).numpy() * 255).astype(np.uint8)
        img = Image.fromarray(arr, "L")
    else:
        img = _as_pil(item).convert("L")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if np.median(arr) < 0.5:  # mostly dark: white lines on black
        arr = 1.0 - arr
    if (arr < 0.5).sum() == 0 or arr.std() < 1e-3:
        raise InputError(f"{name}: the sketch is blank (no dark lines found)")
    h, w = arr.shape
    side = max(h, w)
    canvas = np.ones((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = arr
    img = Image.fromarray((canvas * 255).round().astype(np.uint8), "L").resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


def normalize_style(item: ImageLike, size: int) -> torch.Tensor:
    """Any image → (3, size, size) RGB in [0, 1] (shorter side resized, centre square)."""
    if isinstance(item, torch.Tensor):
        t = item.float()
        if t.dim() != 3 or t.shape[0] != 3:
            raise InputError(f"style tensor must be (3, H, W), got {tuple(t.shape)}")
        return torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return to_tensor(resize_square(_as_pil(item), size))


def _name(item: ImageLike, i: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"input {i}"


def _listify(x: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return list(x)
    return [x]


def stitch(styles: torch.Tensor) -> torch.Tensor:
    """2 styles → left | right halves; 4 → quadrants (paper Fig. 7): one reference image."""
    n, _, h, w = styles.shape
    out = styles[0].clone()
    if n == 2:
        out[:, :, w // 2 :] = styles[1][:, :, w // 2 :]
    elif n == 4:
        out[:, h // 2 :, : w // 2] = styles[2][:, h // 2 :, : w // 2]
        out[:, : h // 2, w // 2 :] = styles[1][:, : h // 2, w // 2 :]
        out[:, h // 2 :, w // 2 :] = styles[3][:, h // 2 :, w // 2 :]
    else:
        raise InputError(f"stitch mixing takes 2 or 4 style images, got {n}")
    return out


class Sketch2Image:
    """A trained model: auto-encoder, optional refiner, optional TOM sketcher."""

    def __init__(
        self,
        ae: SketchAutoEncoder,
        refiner: Refiner | None = None,
        tom: TOMSketcher | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.ae = ae.to(self.device).eval().requires_grad_(False)
        self.refiner = refiner.to(self.device).eval().requires_grad_(False) if refiner is not None else None
        self.tom = tom.to(self.device) if tom is not None else None
        self.size = ae.cfg.size

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> Sketch2Image:
        directory = Path(directory)
        info_path = directory / "sketch2image.json"
        if not info_path.is_file():
            raise CheckpointError(
                f"{directory}: not a sketch2image model folder (no sketch2image.json; make one with `s2i export`)"
            )
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{info_path}: unreadable ({e})") from e
        if info.get("format") != MODEL_FORMAT:
            raise CheckpointError(
                f"{info_path}: model format {info.get('format')!r}; this version ({__version__}) reads {MODEL_FORMAT!r}"
            )
        if not (directory / "ae").is_dir():
            raise CheckpointError(f"{directory}: incomplete model folder (ae/ missing)")
        ae = load_ae(directory / "ae", device)
        refiner = load_refiner(directory / "refiner", device) if (directory / "refiner").is_dir() else None
        tom = TOMSketcher.from_pretrained(directory / "tom", device=device) if (directory / "tom").is_dir() else None
        return cls(ae, refiner, tom, device)

    # --- core -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, sketches: torch.Tensor, f_style: torch.Tensor, refine: bool) -> torch.Tensor:
        sketches, f_style = sketches.to(self.device), f_style.to(self.device)
        out = self.ae.decoder(self.ae.content_encoder(sketches), f_style, sketches)
        if refine and self.refiner is not None:
            out = self.refiner(out, f_style)
        return out.clamp(0, 1).cpu()

    @torch.inference_mode()
    def style_vectors(self, styles: torch.Tensor) -> torch.Tensor:
        return self.ae.style_encoder(styles.to(self.device))

    def prepare_sketches(self, items: list[ImageLike]) -> torch.Tensor:
        return torch.stack([normalize_sketch(x, self.size, _name(x, i)) for i, x in enumerate(items)])

    def prepare_styles(self, items: list[ImageLike]) -> torch.Tensor:
        if not items:
            raise InputError("no style images given")
        return torch.stack([normalize_style(x, self.size) for x in items])

    # --- public API ------------------------------------------------------------------------------
    def generate(
        self, sketch: ImageLike | Sequence[ImageLike], style: ImageLike | Sequence[ImageLike], *, refine: bool = True
    ) -> torch.Tensor:
        """Sketch(es) painted in the style image(s): pairs element-wise, a single one is broadcast.

        Returns (B, 3, size, size) in [0, 1]; ``refine=False`` gives the auto-encoder output.
        """
        sketches, styles = self.prepare_sketches(_listify(sketch)), self.prepare_styles(_listify(style))
        if len(sketches) != len(styles):
            if len(styles) == 1:
                styles = styles.expand(len(sketches), -1, -1, -1)
            elif len(sketches) == 1:
                sketches = sketches.expand(len(styles), -1, -1, -1)
            else:
                raise InputError(f"{len(sketches)} sketches and {len(styles)} styles: give equal numbers or one")
        return self.decode(sketches, self.style_vectors(styles), refine)

    def mix(
        self,
        sketch: ImageLike,
        styles: Sequence[ImageLike],
        weights: Sequence[float] | None = None,
        mode: str = "stitch",
        *,
        refine: bool = True,
    ) -> torch.Tensor:
        """One sketch in a mixture of styles: ``stitch`` 2 or 4 images into one reference (paper Fig. 7),
        or ``vector``: a weighted mean of their style vectors."""
        s = self.prepare_sketches([sketch])
        st = self.prepare_styles(list(styles))
        if mode == "stitch":
            f = self.style_vectors(stitch(st)[None])
        elif mode == "vector":
            w = torch.ones(len(st)) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
            if len(w) != len(st) or (w < 0).any() or w.sum() <= 0:
                raise InputError(f"weights must be {len(st)} non-negative numbers with a positive sum")
            f = (self.style_vectors(st) * (w / w.sum()).to(self.device)[:, None]).sum(0, keepdim=True)
        else:
            raise InputError(f"mix mode {mode!r} must be 'stitch' or 'vector'")
        return self.decode(s, f, refine)

    def transfer(
        self,
        content: ImageLike | Sequence[ImageLike],
        style: ImageLike | Sequence[ImageLike],
        *,
        snapshot: int = 0,
        refine: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content image → TOM sketch → painted in the style. Returns (images, the intermediate sketches)."""
        if self.tom is None:
            raise CheckpointError("this model folder has no tom/ snapshots, which style transfer needs")
        contents = _listify(content)
        content_t = self.prepare_styles(contents)
        with torch.inference_mode():
            sketches = self.tom(content_t.to(self.device))[:, snapshot : snapshot + 1].cpu()
        for i, sk in enumerate(sketches):
            if (sk < 0.5).sum() == 0:
                raise InputError(f"{_name(contents[i], i)}: TOM drew an empty sketch of this image")
        styles = self.prepare_styles(_listify(style))
        if len(styles) == 1:
            styles = styles.expand(len(sketches), -1, -1, -1)
        elif len(styles) != len(sketches):
            raise InputError(f"{len(sketches)} content images and {len(styles)} styles: give equal numbers or one")
        return self.decode(sketches, self.style_vectors(styles), refine), sketches


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def export_model(
    out: Path,
    *,
    ae_run: Path,
    gan_run: Path | None = None,
    tom_run: Path | None = None,
    data: str = "",
    metrics: dict | None = None,
) -> Path:
    """Copy the parts of a trained model into one shareable folder with a model card.

    Written to a temporary folder and renamed, so a failed export leaves nothing behind.
    """
    out = Path(out)
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new folder for the export")
    ae = load_ae(ae_run)  # validates before anything is written
    refiner = load_refiner(gan_run) if gan_run is not None else None
    tom = TOMSketcher.from_pretrained(tom_run) if tom_run is not None else None
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from sketch2image.train.ae import save_pretrained
        from sketch2image.train.gan import save_refiner

        save_pretrained(ae, tmp / "ae")
        if refiner is not None:
            save_refiner(refiner, ae.cfg.style_dim, tmp / "refiner")
        if tom is not None:
            (tmp / "tom" / "snapshots").mkdir(parents=True)
            shutil.copy2(Path(tom_run) / "config.json", tmp / "tom" / "config.json")
            for f in sorted((Path(tom_run) / "snapshots").glob("snapshot_*.safetensors")):
                shutil.copy2(f, tmp / "tom" / "snapshots" / f.name)
        info = {
            "format": MODEL_FORMAT,
            "version": __version__,
            "size": ae.cfg.size,
            "training_data": data,
            "parts": {"ae": True, "refiner": refiner is not None, "tom": tom is not None},
            "tom_snapshots": len(tom.names) if tom is not None else 0,
            "metrics": metrics or {},
        }
        atomic_write_json(tmp / "sketch2image.json", info)
        (tmp / "README.md").write_text(_model_card(info))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _model_card(info: dict) -> str:
    parts = ", ".join(k for k, v in info["parts"].items() if v)
    metrics = "\n".join(f"| {k} | {v} |" for k, v in info["metrics"].items()) or "| (none recorded) | |"
    return f"""# sketch2image model

Self-supervised sketch-to-image synthesis (Liu et al., AAAI 2021), sketch2image {info["version"]}.

- Resolution: {info["size"]} px
- Parts: {parts} ({info["tom_snapshots"]} TOM snapshots)
- Training data: {info["training_data"] or "not recorded"}

```python
from sketch2image.pipeline import Sketch2Image, to_pil
model = Sketch2Image.from_pretrained("path/to/this/folder")
to_pil(model.generate("sketch.png", "style.jpg"))[0].save("out.png")
```

| metric | value |
|---|---|
{metrics}
"""
