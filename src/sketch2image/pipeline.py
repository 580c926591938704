"""``Sketch2Image``: load a complete trained model in one call and use it.

A model folder (``Sketch2Image.save_pretrained``, which ``s2i export`` calls) holds
``sketch2image.json`` (format, version, what it was trained on), ``ae/`` (the auto-encoder),
optionally ``refiner/`` (the EMA GAN refiner) and ``tom/`` (TOM snapshots, needed for
``transfer``), and a ``README.md`` model card.

Inputs may be paths, PIL images or tensors. Sketches of any size and aspect are normalised:
alpha composited on white, colour turned grey, white-on-black inverted, padded (not
stretched) to a square, resized to the model's size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sketch2image.data.images import as_rgb, open_rgb, resize_square, to_tensor
from sketch2image.data.strokes import MODES, content_box, default_stroke_width, normalise_strokes
from sketch2image.errors import CheckpointError, InputError
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.refiner import Refiner
from sketch2image.options import FITS, MIX_MODES
from sketch2image.sketcher import TOMSketcher
from sketch2image.storage import (
    PIPELINE_FILE,
    PIPELINE_FORMAT,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    folder_kind,
    read_json,
    run_of,
)
from sketch2image.version import __version__

ERRORS = ("raise", "skip")
log = logging.getLogger("sketch2image")
ImageLike = str | os.PathLike | Image.Image | torch.Tensor


def _as_pil(item: ImageLike) -> Image.Image:
    if isinstance(item, (str, os.PathLike)):
        return open_rgb(item)
    if isinstance(item, Image.Image):
        return as_rgb(item)
    raise TypeError(f"expected a path or PIL image, got {type(item).__name__}")


def sketch_grey(item: ImageLike) -> np.ndarray:
    """Any sketch input → (H, W) grey in [0, 1] at its own size (alpha composited on white)."""
    if isinstance(item, torch.Tensor):
        t = item.detach().float().cpu()
        t = t.mean(0, keepdim=True) if t.dim() == 3 and t.shape[0] in (3, 4) else t.reshape(1, *t.shape[-2:])
        return t[0].clamp(0, 1).numpy()
    return np.asarray(_as_pil(item).convert("L"), dtype=np.float32) / 255.0


def normalize_sketch(
    item: ImageLike,
    size: int,
    name: str = "sketch",
    stroke: str = "auto",
    stroke_width: float | None = None,
) -> torch.Tensor:
    """Any sketch → (1, size, size) grey in [0, 1], dark lines on white, padded (never stretched) to a square.

    ``stroke="auto"`` normalises the strokes to the model's training line weight (``data/strokes.py``);
    ``"none"`` keeps the drawing's grey levels. A sketch with no strokes raises ``InputError`` (blank).
    """
    width = stroke_width if stroke_width is not None else default_stroke_width(size)
    return normalise_strokes(sketch_grey(item), size, width, stroke, name)[0]


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
        stroke_width: float | None = None,
        noise: float = 0.0,
        info: dict | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.ae = ae.to(self.device).eval().requires_grad_(False)
        self.refiner = refiner.to(self.device).eval().requires_grad_(False) if refiner is not None else None
        self.tom = tom.to(self.device) if tom is not None else None
        self.size = ae.cfg.size
        # The line weight of the sketches the auto-encoder learnt from (model pixels); input strokes are
        # normalised to it. Recorded by `s2i export`; older model folders get the default for their size.
        self.stroke_width = stroke_width if stroke_width else default_stroke_width(self.size)
        self.stroke_width_recorded = bool(stroke_width)
        # Scale of the refiner's learnt per-pixel noise at inference (StyleGAN's noise_mode): 0, the
        # default, draws none; 1 is as in training. On face photos the noise cost FID 103 → 230 (grain).
        self.noise = float(noise)
        self.info = dict(info or {})  # what the model card records: training_data, metrics

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu", noise: float = 0.0
    ) -> Sketch2Image:
        """A model folder written by ``save_pretrained`` (``s2i export``)."""
        directory = Path(directory)
        if folder_kind(directory) != "model":
            raise CheckpointError(
                f"{directory}: not a sketch2image model folder (no {PIPELINE_FILE}; make one with `s2i export`)"
            )
        info_path = directory / PIPELINE_FILE
        info = read_json(info_path, "model description")
        if not isinstance(info, dict) or info.get("format") != PIPELINE_FORMAT:
            found = info.get("format") if isinstance(info, dict) else None
            raise CheckpointError(
                f"{info_path}: model format {found!r}; this version ({__version__}) reads {PIPELINE_FORMAT!r}"
            )
        if not (directory / "ae").is_dir():
            raise CheckpointError(f"{directory}: incomplete model folder (ae/ missing)")
        ae = SketchAutoEncoder.from_pretrained(directory / "ae", device)
        refiner = Refiner.from_pretrained(directory / "refiner", device) if (directory / "refiner").is_dir() else None
        tom = TOMSketcher.from_pretrained(directory / "tom", device=device) if (directory / "tom").is_dir() else None
        info_fields = {"training_data": info.get("training_data", ""), "metrics": info.get("metrics") or {}}
        return cls(ae, refiner, tom, device, stroke_width=info.get("stroke_width"), noise=noise, info=info_fields)

    @classmethod
    def from_runs(
        cls,
        ae: str | os.PathLike,
        refiner: str | os.PathLike | None = None,
        tom: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
    ) -> Sketch2Image:
        """A model from the folders of its training runs (or their ``model/`` folders); the line weight of
        the auto-encoder's training sketches comes from the manifest its ``run.json`` names."""
        model = SketchAutoEncoder.from_pretrained(ae, device)
        return cls(
            model,
            Refiner.from_pretrained(refiner, device) if refiner is not None else None,
            TOMSketcher.from_pretrained(tom, device=device) if tom is not None else None,
            device,
            stroke_width=_training_stroke_width(Path(ae), model.cfg.size),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", noise: float = 0.0) -> Sketch2Image:
        """An exported model folder, or an auto-encoder alone (its run folder or ``model/``)."""
        if folder_kind(path) == "model":
            return cls.from_pretrained(path, device, noise)
        return cls(SketchAutoEncoder.from_pretrained(path, device), device=device, noise=noise)

    def save_pretrained(self, directory: str | os.PathLike, *, training_data: str | None = None,
                        metrics: dict | None = None) -> Path:  # fmt: skip
        """One shareable folder with a model card: what ``from_pretrained`` reads.

        Written to a temporary folder and renamed, so a failed save leaves nothing; an existing folder
        is never overwritten. ``training_data`` and ``metrics`` (name → text) go into the model card.
        """
        out = Path(directory)
        if out.exists():
            raise InputError(f"{out}: already exists; choose a new folder for the export")
        info = {
            "format": PIPELINE_FORMAT,
            "version": __version__,
            "size": self.size,
            "training_data": self.info.get("training_data", "") if training_data is None else training_data,
            "parts": {"ae": True, "refiner": self.refiner is not None, "tom": self.tom is not None},
            "tom_snapshots": len(self.tom.names) if self.tom is not None else 0,
            "stroke_width": self.stroke_width if self.stroke_width_recorded else None,
            "metrics": self.info.get("metrics", {}) if metrics is None else metrics,
        }
        with atomic_dir(out, replace=False) as tmp:
            self.ae.save_pretrained(tmp / "ae")
            if self.refiner is not None:
                self.refiner.save_pretrained(tmp / "refiner")
            if self.tom is not None:
                self.tom.save_pretrained(tmp / "tom")
            atomic_write_json(tmp / PIPELINE_FILE, info)
            atomic_write_text(tmp / "README.md", _model_card(info))
        return out

    # --- core -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self,
        sketches: torch.Tensor,
        f_style: torch.Tensor,
        refine: bool,
        seeds: Sequence[int] | None = None,
        noise: float | None = None,
    ) -> torch.Tensor:
        """Content encoder + decoder (+ refiner). ``seeds``: one per output for the refiner's per-pixel noise,
        so each picture is reproducible whatever batch it is made in (None: the global random state).
        ``noise``: the noise's scale (None: ``self.noise``)."""
        noise = self.noise if noise is None else float(noise)
        sketches, f_style = sketches.to(self.device), f_style.to(self.device)
        out = self.ae.decoder(self.ae.content_encoder(sketches), f_style, sketches)
        if refine and self.refiner is not None:
            draw = noise and seeds is not None  # no generators when no noise is drawn
            gens = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds] if draw else None
            out = self.refiner(out, f_style, generator=gens, noise=noise)
        return out.clamp(0, 1).cpu()

    @torch.inference_mode()
    def style_vectors(self, styles: torch.Tensor) -> torch.Tensor:
        return self.ae.style_encoder(styles.to(self.device))

    def prepare_sketches(self, items: list[ImageLike], stroke: str = "auto") -> torch.Tensor:
        """Sketches → (B, 1, size, size) at the model's size and line weight (``stroke``: auto | none)."""
        return torch.stack([self.prepare_sketch(x, _name(x, i), stroke) for i, x in enumerate(items)])

    def prepare_sketch(self, item: ImageLike, name: str = "sketch", stroke: str = "auto") -> torch.Tensor:
        return normalize_sketch(item, self.size, name, stroke, self.stroke_width)

    def prepare_styles(self, items: list[ImageLike]) -> torch.Tensor:
        if not items:
            raise InputError("no style images given")
        return torch.stack([normalize_style(x, self.size) for x in items])

    def prepare_inputs(
        self, items: list[ImageLike], kind: str, errors: str = "raise", stroke: str = "auto"
    ) -> tuple[list[torch.Tensor | None], list[tuple[int, int] | None]]:
        """Each input (``kind``: sketch | style) normalised, None where ``errors="skip"`` skipped it (one
        warning line each); and for sketches their own (H, W), for cropping the outputs back."""
        if errors not in ERRORS:
            raise ValueError(f"errors={errors!r} must be one of {ERRORS}")
        if stroke not in MODES:
            raise InputError(f"stroke={stroke!r} must be one of {MODES}")
        out: list[torch.Tensor | None] = []
        shapes: list[tuple[int, int] | None] = []
        for i, x in enumerate(items):
            try:
                if kind == "sketch":
                    grey = sketch_grey(x)
                    out.append(normalise_strokes(grey, self.size, self.stroke_width, stroke, _name(x, i))[0])
                    shapes.append(grey.shape)
                else:
                    out.append(normalize_style(x, self.size))
                    shapes.append(None)
            except InputError as e:
                if errors == "raise":
                    raise
                log.warning("skipped %s", e)
                out.append(None)
                shapes.append(None)
        return out, shapes

    def _finish(self, images: list[torch.Tensor | None], shapes: list, fit: str, errors: str):
        """Crop each square output to its sketch's aspect (``fit``), then a tensor, or a list when the shapes
        differ or inputs were skipped (``errors="skip"``: None in their place)."""
        if fit not in FITS:
            raise InputError(f"fit={fit!r} must be one of {FITS}")
        done = [None if img is None else fit_output(img, shape, fit) for img, shape in zip(images, shapes, strict=True)]
        if errors == "skip":
            return done
        if len({tuple(d.shape) for d in done}) == 1:
            return torch.stack(done)
        return done

    # --- public API ------------------------------------------------------------------------------
    def generate(
        self,
        sketch: ImageLike | Sequence[ImageLike],
        style: ImageLike | Sequence[ImageLike],
        *,
        refine: bool = True,
        stroke: str = "auto",
        fit: str = "crop",
        errors: str = "raise",
        seed: int | None = 0,
        noise: float | None = None,
    ) -> torch.Tensor | list[torch.Tensor | None]:
        """Sketch(es) painted in the style image(s): pairs element-wise, a single one is broadcast.

        Returns (B, 3, h, w) in [0, 1]. ``fit``: ``crop`` (default) cuts the output to the sketch's aspect
        ratio at the model's resolution, ``square`` keeps the model's padded square, ``original`` also
        resizes to the sketch's own pixel size (LANCZOS). Outputs of different shapes come as a list.
        ``stroke``: ``auto`` normalises the sketch's lines to the model's training line weight, ``none``
        uses them as drawn. ``errors="skip"``: an unusable sketch or style is logged and skipped, and
        the result is a list with None in the place of each output that could not be made.
        ``refine=False`` gives the auto-encoder output. ``noise``: scale of the refiner's per-pixel noise
        (None: the model's ``noise``, 0 by default; 1: as in training). ``seed``: output i's noise is
        drawn from ``seed + i`` (the same call gives the same pictures; None: the global random state).
        """
        sketches, styles = _listify(sketch), _listify(style)
        if len(sketches) != len(styles) and 1 not in (len(sketches), len(styles)):
            raise InputError(f"{len(sketches)} sketches and {len(styles)} styles: give equal numbers or one")
        n = max(len(sketches), len(styles))
        sk, shapes = self.prepare_inputs(sketches, "sketch", errors, stroke)
        st, _ = self.prepare_inputs(styles, "style", errors, stroke)
        pairs = [(sk[i if len(sk) > 1 else 0], st[i if len(st) > 1 else 0]) for i in range(n)]
        shapes = [shapes[i if len(shapes) > 1 else 0] for i in range(n)]
        good = [i for i, (a, b) in enumerate(pairs) if a is not None and b is not None]
        images: list[torch.Tensor | None] = [None] * n
        if good:
            s_t = torch.stack([pairs[i][0] for i in good])
            f = self.style_vectors(torch.stack([pairs[i][1] for i in good]))
            for i, img in zip(good, self.decode(s_t, f, refine, _seeds(seed, good), noise), strict=True):
                images[i] = img
        return self._finish(images, shapes, fit, errors)

    def generate_pairs(
        self,
        sketches: Sequence[torch.Tensor | None],
        styles: Sequence[torch.Tensor | None],
        pairs: Sequence[tuple[int, int]],
        *,
        shapes: Sequence[tuple[int, int] | None] | None = None,
        refine: bool = True,
        fit: str = "crop",
        seed: int | None = 0,
        noise: float | None = None,
        batch_size: int = 8,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Prepared inputs (``prepare_inputs``) painted for each (sketch index, style index) pair, ``batch_size``
        at a time: yields (pair position, image) as each batch is done, so a caller can write them as they
        come. Pairs with a skipped (None) input are left out. Output i's noise comes from ``seed + i``,
        whatever the batch size; ``shapes`` (the sketches' own sizes) with ``fit`` as in ``generate``."""
        good = [i for i, (a, b) in enumerate(pairs) if sketches[a] is not None and styles[b] is not None]
        for start in range(0, len(good), max(1, batch_size)):
            chunk = good[start : start + batch_size]
            f = self.style_vectors(torch.stack([styles[pairs[i][1]] for i in chunk]))
            out = self.decode(
                torch.stack([sketches[pairs[i][0]] for i in chunk]), f, refine, _seeds(seed, chunk), noise
            )
            for i, img in zip(chunk, out, strict=True):
                yield i, fit_output(img, shapes[pairs[i][0]] if shapes else None, fit)

    def mix(
        self,
        sketch: ImageLike,
        styles: Sequence[ImageLike],
        weights: Sequence[float] | None = None,
        mode: str = "stitch",
        *,
        refine: bool = True,
        stroke: str = "auto",
        fit: str = "crop",
        seed: int | None = 0,
        noise: float | None = None,
    ) -> torch.Tensor:
        """One sketch in a mixture of styles: ``stitch`` 2 or 4 images into one reference (paper Fig. 7),
        or ``vector``: a weighted mean of their style vectors. Every style is required (leaving one out
        would silently change the mixture). ``stroke``, ``fit``, ``seed`` and ``noise`` as in ``generate``."""
        (s,), shapes = self.prepare_inputs([sketch], "sketch", "raise", stroke)
        st = self.prepare_styles(list(styles))
        if mode == "stitch":
            f = self.style_vectors(stitch(st)[None])
        elif mode == "vector":
            w = torch.ones(len(st)) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
            if len(w) != len(st) or (w < 0).any() or w.sum() <= 0:
                raise InputError(f"weights must be {len(st)} non-negative numbers with a positive sum")
            f = (self.style_vectors(st) * (w / w.sum()).to(self.device)[:, None]).sum(0, keepdim=True)
        else:
            raise InputError(f"mix mode {mode!r} must be one of {MIX_MODES}")
        return self._finish(list(self.decode(s[None], f, refine, _seeds(seed, [0]), noise)), shapes, fit, "raise")

    def transfer(
        self,
        content: ImageLike | Sequence[ImageLike],
        style: ImageLike | Sequence[ImageLike],
        *,
        snapshot: int = 0,
        refine: bool = True,
        errors: str = "raise",
        seed: int | None = 0,
        noise: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Content image → TOM sketch → painted in the style. Returns (images, the intermediate sketches).

        The model's own TOM draws at the model's size and line weight, so no stroke normalisation and
        no crop: outputs are the model's squares. ``errors="skip"``: an unreadable content or style
        image, or one TOM draws nothing for, is logged and skipped (None in its place in both lists).
        ``seed`` and ``noise`` as in ``generate``.
        """
        if self.tom is None:
            raise CheckpointError("this model folder has no tom/ snapshots, which style transfer needs")
        contents, style_items = _listify(content), _listify(style)
        if len(style_items) not in (1, len(contents)):
            raise InputError(f"{len(contents)} content images and {len(style_items)} styles: give equal numbers or one")
        ct, _ = self.prepare_inputs(contents, "style", errors, "auto")
        st, _ = self.prepare_inputs(style_items, "style", errors, "auto")
        n = len(contents)
        sketches: list[torch.Tensor | None] = [None] * n
        ok = [i for i in range(n) if ct[i] is not None]
        if ok:
            with torch.inference_mode():
                drawn = self.tom(torch.stack([ct[i] for i in ok]).to(self.device), snapshot=snapshot).cpu()
            for i, sk in zip(ok, drawn, strict=True):
                if (sk < 0.5).sum() == 0:
                    err = InputError(f"{_name(contents[i], i)}: TOM drew an empty sketch of this image")
                    if errors == "raise":
                        raise err
                    log.warning("skipped %s", err)
                    continue
                sketches[i] = sk
        pairs = [(i, st[i if len(st) > 1 else 0]) for i in range(n)]
        good = [i for i, s in pairs if sketches[i] is not None and s is not None]
        images: list[torch.Tensor | None] = [None] * n
        if good:
            s_t = torch.stack([sketches[i] for i in good])
            f = self.style_vectors(torch.stack([pairs[i][1] for i in good]))
            for i, img in zip(good, self.decode(s_t, f, refine, _seeds(seed, good), noise), strict=True):
                images[i] = img
        if errors == "skip":
            return images, [s if images[i] is not None else None for i, s in enumerate(sketches)]
        return torch.stack(images), torch.stack(sketches)


def _seeds(seed: int | None, positions: Sequence[int]) -> list[int] | None:
    return None if seed is None else [seed + i for i in positions]


def fit_output(image: torch.Tensor, shape: tuple[int, int] | None, fit: str) -> torch.Tensor:
    """A (3, size, size) output cut to the (H, W) sketch's aspect ratio (``crop``), also resized to
    (H, W) with LANCZOS (``original``), or left as the model's square (``square``)."""
    if fit == "square" or shape is None:
        return image
    top, left, hh, ww = content_box(shape, image.shape[-1])
    out = image[:, top : top + hh, left : left + ww]
    if fit == "original" and tuple(out.shape[-2:]) != tuple(shape):
        pil = to_pil(out[None])[0].resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
        out = to_tensor(pil)
    return out


def to_pil(images: torch.Tensor | Sequence[torch.Tensor]) -> list[Image.Image]:
    """(B, 3, H, W) or a list of (3, H, W) images in [0, 1] → PIL images."""
    out = []
    for img in images:
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


def _training_stroke_width(ae_run: Path, size: int) -> float | None:
    """The line weight of the AE's training sketches, from the manifest its run.json names (None if gone)."""
    from sketch2image.data.paired import training_stroke_width

    run = run_of(ae_run)
    try:
        manifest = read_json(run / "run.json", "run description")["data"] if run is not None else None
    except (CheckpointError, KeyError, TypeError):
        return None
    if not isinstance(manifest, str):
        return None
    width = training_stroke_width(manifest, size)
    return round(width, 3) if width else None


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
