"""``Sketch2Image``: load a complete trained model in one call and use it.

A model folder (``Sketch2Image.save_pretrained``, which ``s2i export`` calls) holds
``sketch2image.json`` (format, version, what it was trained on), ``ae/`` (the auto-encoder),
optionally ``refiner/`` (the EMA GAN refiner) and ``tom/`` (TOM snapshots, needed for
``transfer``), and a ``README.md`` model card.

``generate``, ``mix`` and ``transfer`` read their inputs through ``processing.InputProcessor`` (paths,
PIL images or tensors, of any size), paint through one batched path (``generate_pairs``) and return
one type, ``Sketch2ImageOutput``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from sketch2image.data.strokes import default_stroke_width
from sketch2image.errors import CheckpointError, InputError
from sketch2image.nets.autoencoder import SketchAutoEncoder
from sketch2image.nets.refiner import Refiner
from sketch2image.options import FITS, MIX_MODES
from sketch2image.processing import (
    ImageLike,
    InputProcessor,
    Shape,
    fit_output,
    input_name,
    listify,
    skip,
    stitch,
    to_pil,
)
from sketch2image.sketcher import TOMSketcher
from sketch2image.storage import (
    PIPELINE_FILE,
    PIPELINE_FORMAT,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    folder_kind,
    read_document,
    read_run_info,
)
from sketch2image.version import __version__


@dataclass
class Sketch2ImageOutput:
    """What ``generate``, ``mix`` and ``transfer`` return: one entry per output, in the order of the inputs.

    ``images``: (3, h, w) in [0, 1], None where ``errors="skip"`` skipped an input. ``sketches``: the
    (1, size, size) sketch each was painted from, as the model saw it (for ``transfer``, TOM's drawing).
    """

    images: list[torch.Tensor | None]
    sketches: list[torch.Tensor | None]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter(self.images)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        return self.images[i]

    def stack(self) -> torch.Tensor:
        """(B, 3, h, w): needs every output made, all of one shape (``fit="square"`` always is)."""
        missing = [i for i, x in enumerate(self.images) if x is None]
        if missing or not self.images:
            raise ValueError(f"outputs {missing[:5]} were skipped (or none made): use .images")
        if len({tuple(x.shape) for x in self.images}) > 1:
            raise ValueError("the outputs differ in shape (sketches of different aspect): use .images or fit='square'")
        return torch.stack(self.images)

    def pil(self) -> list[Image.Image | None]:
        return [None if x is None else to_pil([x])[0] for x in self.images]


def _chunks(items: list[int], batch_size: int | None) -> Iterator[list[int]]:
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size={batch_size} must be >= 1 (or None: all at once)")
    step = batch_size or max(1, len(items))
    for start in range(0, len(items), step):
        yield items[start : start + step]


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
        info = read_document(directory / PIPELINE_FILE, (PIPELINE_FORMAT,), "sketch2image model description")
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

    @property
    def processor(self) -> InputProcessor:
        """How this model reads sketches and style images (its size, its training line weight)."""
        return InputProcessor(self.size, self.stroke_width)

    # --- the one batched path --------------------------------------------------------------------
    def generate_pairs(
        self,
        sketches: Sequence[torch.Tensor | None],
        styles: Sequence[torch.Tensor | None],
        pairs: Sequence[tuple[int, int]],
        *,
        shapes: Sequence[Shape | None] | None = None,
        refine: bool = True,
        fit: str = "crop",
        seed: int | None = 0,
        noise: float | None = None,
        batch_size: int | None = None,
        vectors: bool = False,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Prepared inputs (``processor``) painted for each (sketch index, style index) pair, ``batch_size``
        pairs at a time (None: all at once): yields (pair position, image) as each batch is done, so a caller
        can write them as they come. Pairs with a skipped (None) input are left out. Output i's noise comes
        from ``seed + i``, whatever the batch size; ``shapes`` (the sketches' own sizes) with ``fit`` as in
        ``generate``. ``vectors``: ``styles`` are style vectors already (``mix``), not images."""
        if fit not in FITS:
            raise InputError(f"fit={fit!r} must be one of {FITS}")
        good = [i for i, (a, b) in enumerate(pairs) if sketches[a] is not None and styles[b] is not None]
        for chunk in _chunks(good, batch_size):
            st = torch.stack([styles[pairs[i][1]] for i in chunk])
            f = st.to(self.device) if vectors else self.style_vectors(st)
            out = self.decode(
                torch.stack([sketches[pairs[i][0]] for i in chunk]), f, refine, _seeds(seed, chunk), noise
            )
            for i, img in zip(chunk, out, strict=True):
                yield i, fit_output(img, shapes[pairs[i][0]] if shapes else None, fit)

    def _output(self, sketches: list, styles: list, pairs: list[tuple[int, int]], **kw) -> Sketch2ImageOutput:
        images: list[torch.Tensor | None] = [None] * len(pairs)
        for i, img in self.generate_pairs(sketches, styles, pairs, **kw):
            images[i] = img
        used = [None if img is None else sketches[a] for img, (a, _) in zip(images, pairs, strict=True)]
        return Sketch2ImageOutput(images, used)

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
        batch_size: int | None = None,
    ) -> Sketch2ImageOutput:
        """Sketch(es) painted in the style image(s): pairs element-wise, a single one is broadcast.

        ``.images[i]`` is (3, h, w) in [0, 1] (``.stack()``: one tensor, ``.pil()``: PIL images). ``fit``:
        ``crop`` (default) cuts the output to the sketch's aspect ratio at the model's resolution, ``square``
        keeps the model's padded square, ``original`` also resizes to the sketch's own pixel size (LANCZOS).
        ``stroke``: ``auto`` normalises the sketch's lines to the model's training line weight, ``none``
        uses them as drawn. ``errors="skip"``: an unusable sketch or style is logged and skipped (None in
        the place of each output that could not be made). ``refine=False`` gives the auto-encoder output.
        ``noise``: scale of the refiner's per-pixel noise (None: the model's ``noise``, 0 by default; 1: as
        in training). ``seed``: output i's noise is drawn from ``seed + i`` (the same call gives the same
        pictures; None: the global random state). ``batch_size``: pairs painted at once (None: all).
        """
        sketches, styles = listify(sketch), listify(style)
        if not sketches:
            raise InputError("no sketches given")
        if len(sketches) != len(styles) and 1 not in (len(sketches), len(styles)):
            raise InputError(f"{len(sketches)} sketches and {len(styles)} styles: give equal numbers or one")
        sk, shapes = self.processor.sketches(sketches, errors, stroke)
        st = self.processor.styles(styles, errors)
        n = max(len(sk), len(st))
        pairs = [(i if len(sk) > 1 else 0, i if len(st) > 1 else 0) for i in range(n)]
        return self._output(sk, st, pairs, shapes=shapes, refine=refine, fit=fit, seed=seed, noise=noise,
                            batch_size=batch_size)  # fmt: skip

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
    ) -> Sketch2ImageOutput:
        """One sketch in a mixture of styles: ``stitch`` 2 or 4 images into one reference (paper Fig. 7),
        or ``vector``: a weighted mean of their style vectors. Every style is required (leaving one out
        would silently change the mixture). ``stroke``, ``fit``, ``seed`` and ``noise`` as in ``generate``."""
        sk, shapes = self.processor.sketches([sketch], "raise", stroke)
        st = torch.stack(self.processor.styles(list(styles)))
        if mode == "stitch":
            f = self.style_vectors(stitch(st)[None])
        elif mode == "vector":
            w = torch.ones(len(st)) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
            if len(w) != len(st) or (w < 0).any() or w.sum() <= 0:
                raise InputError(f"weights must be {len(st)} non-negative numbers with a positive sum")
            f = (self.style_vectors(st) * (w / w.sum()).to(self.device)[:, None]).sum(0, keepdim=True)
        else:
            raise InputError(f"mix mode {mode!r} must be one of {MIX_MODES}")
        return self._output(sk, [f[0]], [(0, 0)], shapes=shapes, refine=refine, fit=fit, seed=seed, noise=noise,
                            vectors=True)  # fmt: skip

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
        batch_size: int | None = None,
    ) -> Sketch2ImageOutput:
        """Content image → TOM sketch (``.sketches``) → painted in the style (``.images``).

        The model's own TOM draws at the model's size and line weight, so no stroke normalisation and
        no crop: outputs are the model's squares. ``errors="skip"``: an unreadable content or style
        image, or one TOM draws nothing for, is logged and skipped (None in its place).
        ``seed``, ``noise`` and ``batch_size`` as in ``generate``.
        """
        if self.tom is None:
            raise CheckpointError("this model folder has no tom/ snapshots, which style transfer needs")
        contents, style_items = listify(content), listify(style)
        if not contents:
            raise InputError("no content images given")
        if len(style_items) not in (1, len(contents)):
            raise InputError(f"{len(contents)} content images and {len(style_items)} styles: give equal numbers or one")
        ct = self.processor.styles(contents, errors)
        st = self.processor.styles(style_items, errors)
        sketches: list[torch.Tensor | None] = [None] * len(contents)
        for chunk in _chunks([i for i, x in enumerate(ct) if x is not None], batch_size):
            with torch.inference_mode():
                drawn = self.tom(torch.stack([ct[i] for i in chunk]).to(self.device), snapshot=snapshot).cpu()
            for i, sk in zip(chunk, drawn, strict=True):
                if (sk < 0.5).sum() == 0:
                    skip(InputError(f"{input_name(contents[i], i)}: TOM drew an empty sketch of this image"), errors)
                else:
                    sketches[i] = sk
        pairs = [(i, i if len(st) > 1 else 0) for i in range(len(contents))]
        return self._output(sketches, st, pairs, refine=refine, fit="square", seed=seed, noise=noise,
                            batch_size=batch_size)  # fmt: skip


def _seeds(seed: int | None, positions: Sequence[int]) -> list[int] | None:
    return None if seed is None else [seed + i for i in positions]


def _training_stroke_width(ae_run: Path, size: int) -> float | None:
    """The line weight of the AE's training sketches, from the manifest its run.json names (None if gone)."""
    from sketch2image.data.paired import training_stroke_width

    try:
        manifest = (read_run_info(ae_run) or {}).get("data")
    except CheckpointError:
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
from sketch2image import Sketch2Image
model = Sketch2Image.from_pretrained("path/to/this/folder")
model.generate("sketch.png", "style.jpg").pil()[0].save("out.png")
```

| metric | value |
|---|---|
{metrics}
"""
