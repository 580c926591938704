"""``s2i app``: a Gradio web app around ``Sketch2Image`` (an optional extra: ``pip install sketch2image[app]``).

Three tabs: **Draw** (sketchpad or uploaded sketch + a style from the gallery or an upload →
auto-encoder output beside the refined picture), **Mix** (2–4 styles, stitched or weighted in
style-vector space) and **Photo → sketch → restyle** (TOM draws the sketch of a photo, which
is then painted in a style). The model loads once; every generation holds one lock, so
concurrent users queue instead of sharing half-finished state. Problems with inputs (a blank
canvas, a file that is not an image) are shown as a message in the page.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sketch2image.errors import InputError, S2IError
from sketch2image.options import MIX_MODES
from sketch2image.storage import folder_kind

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an offline tool

DEFAULT_MODEL = Path("s2i-demo") / "model"
EXAMPLE_EMOJIS = ("1F34E", "1F30A", "1F338", "1F3A8", "1F981", "1F31E", "1F427", "1F680")  # built-in styles
MAX_EXAMPLES = 12
OUT_HEIGHT = 288  # results are shown enlarged; downloads keep the model's own size
# Results fill their panel (a 64 px model's output is shown enlarged, pixels kept sharp); downloads keep the size.
CSS = ".s2i-result img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")  # no web-font fetch: works offline


def _require_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise S2IError("the web app needs Gradio: `pip install 'sketch2image[app]'`") from None
    return gr


def find_model(model: str | os.PathLike | None) -> Path:
    """The model folder to serve: the one given, or the demo's, or an error that says how to make one."""
    if model is not None:
        return Path(model)
    if folder_kind(DEFAULT_MODEL) == "model":
        return DEFAULT_MODEL
    raise S2IError(
        f"no --model given and no demo model at ./{DEFAULT_MODEL}. Make one with `bash scripts/demo.sh` "
        "(or `s2i demo`), or train and `s2i export` your own, then `s2i app --model DIR`"
    )


def example_styles(model_dir: Path, size: int, folder: str | os.PathLike | None = None) -> list[Image.Image]:
    """Gallery styles: a given folder, else the demo's held-out images, else a few rendered OpenMoji emojis."""
    from sketch2image.data.images import open_rgb, resize_square, scan_images

    candidates = [Path(folder)] if folder else []
    candidates += sorted(model_dir.parent.glob("openmoji*/images/test"))
    for c in candidates:
        if c.is_dir():
            files = scan_images(c)
            if files:
                step = max(1, len(files) // MAX_EXAMPLES)
                return [resize_square(open_rgb(f), max(size, 128)) for f in files[::step][:MAX_EXAMPLES]]
    from sketch2image.data.openmoji import openmoji_svg_dir, render_pair

    try:
        svg_dir = openmoji_svg_dir()
        return [render_pair(svg_dir / f"{e}.svg", max(size, 128))[0] for e in EXAMPLE_EMOJIS]
    except InputError:
        return []


def sketch_from_editor(value) -> Image.Image | None:
    """The drawing of a Sketchpad value (its composite, strokes on a transparent canvas)."""
    if value is None:
        return None
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        return None
    arr = np.asarray(composite)
    if arr.ndim == 3 and arr.shape[2] == 4 and arr[..., 3].max() == 0:
        return None  # nothing drawn
    return Image.fromarray(arr)


def open_upload(path: str | None, what: str) -> Image.Image | None:
    """An uploaded file as an image, or an InputError naming the file and the problem."""
    if not path:
        return None
    from sketch2image.data.images import open_rgb

    try:
        return open_rgb(path)
    except InputError as e:  # name the file as the user knows it, not by the server's temp path
        raise InputError(f"{what} upload {str(e).replace(str(path), Path(path).name, 1)}") from None


class App:
    """The model and its lock; the callbacks the page wires up."""

    def __init__(self, model_dir: Path, device: str = "cpu", examples: str | os.PathLike | None = None) -> None:
        from sketch2image.pipeline import Sketch2Image

        self.model_dir = Path(model_dir)
        self.model = Sketch2Image.from_pretrained(self.model_dir, device)
        self.examples = example_styles(self.model_dir, self.model.size, examples)
        self.lock = threading.Lock()

    def _run(self, fn: Callable, n_out: int):
        """Run under the lock; a user error becomes a message in the page, never a stack trace."""
        try:
            with self.lock:
                return (*fn(), "")
        except S2IError as e:
            return (*([None] * n_out), f"**⚠ {e}**")

    def _style(self, upload: str | None, selected: int | None) -> Image.Image:
        img = open_upload(upload, "style")
        if img is not None:
            return img
        if selected is not None and 0 <= selected < len(self.examples):
            return self.examples[selected]
        raise InputError("choose a style image from the gallery or upload one")

    @staticmethod
    def _sketch(drawn, upload: str | None) -> Image.Image:
        img = open_upload(upload, "sketch")
        if img is not None:
            return img
        img = sketch_from_editor(drawn)
        if img is None:
            raise InputError("the canvas is blank: draw a sketch (or upload one) first")
        return img

    def generate(self, drawn, sketch_upload, style_upload, selected, stroke: str = "auto", seed=0, noise=0.0):
        """(auto-encoder output, refined output, the sketch as the model sees it, message).

        ``noise`` scales the refiner's per-pixel noise (0: none), ``seed`` draws it: the same inputs,
        noise and seed give the same picture."""
        from sketch2image.processing import to_pil

        def work():
            sketch, style = self._sketch(drawn, sketch_upload), self._style(style_upload, selected)
            seen = to_pil(self.model.processor.sketch(sketch, "sketch", stroke).expand(3, -1, -1)[None])[0]
            ae = self.model.generate(sketch, style, refine=False, stroke=stroke).pil()[0]
            refined = self.model.generate(sketch, style, stroke=stroke, seed=int(seed or 0), noise=float(noise or 0))
            return ae, refined.pil()[0] if self.model.refiner else ae, seen

        return self._run(work, 3)

    def mix(self, drawn, sketch_upload, mode, *styles_and_weights):
        def work():
            sketch = self._sketch(drawn, sketch_upload)
            uploads, weights = styles_and_weights[:4], styles_and_weights[4:]
            chosen = [(open_upload(u, "style"), w) for u, w in zip(uploads, weights, strict=True) if u]
            if len(chosen) < 2:
                raise InputError("upload at least two style images to mix")
            if mode == "stitch" and len(chosen) == 3:
                raise InputError("stitching takes 2 or 4 style images (use vector mode for 3)")
            imgs, ws = [c[0] for c in chosen], [float(c[1]) for c in chosen]
            return (self.model.mix(sketch, imgs, ws if mode == "vector" else None, mode).pil()[0],)

        return self._run(work, 1)

    def transfer(self, content_upload, style_upload, selected, snapshot):
        from sketch2image.processing import to_pil

        def work():
            if self.model.tom is None:
                raise InputError("this model has no TOM snapshots; export it with `s2i export --tom RUN`")
            content = open_upload(content_upload, "photo")
            if content is None:
                raise InputError("upload a photo to turn into a sketch")
            snap = min(int(snapshot), len(self.model.tom.names) - 1)
            out = self.model.transfer(content, self._style(style_upload, selected), snapshot=snap)
            return to_pil([out.sketches[0].expand(3, -1, -1)])[0], out.pil()[0]

        return self._run(work, 2)


def build(app: App):
    """The page. Returned unlaunched, so tests and embedders can launch it their own way."""
    gr = _require_gradio()
    size = app.model.size
    refined_label = "refined (GAN)" if app.model.refiner is not None else "refined (no refiner in this model)"

    def gallery(label: str):
        return gr.Gallery(value=app.examples, label=label, columns=6, height=200, allow_preview=False,
                          elem_classes=["s2i-gallery"])  # fmt: skip

    def result(label: str, elem_id: str):
        return gr.Image(label=label, type="pil", format="png", buttons=["download"], height=OUT_HEIGHT,
                        elem_id=elem_id, elem_classes=["s2i-result"], interactive=False)  # fmt: skip

    def on_select(evt):
        return evt.index

    on_select.__annotations__ = {"evt": gr.SelectData}  # gradio injects the event by this annotation

    with gr.Blocks(title="sketch2image") as page:
        gr.Markdown(
            f"# sketch2image\nDraw a sketch, pick a style image, get the picture. Model: `{app.model_dir}` "
            f"({size} px). Self-Supervised Sketch-to-Image Synthesis (Liu et al., AAAI 2021)."
        )
        with gr.Tab("Draw"):
            selected = gr.State(0 if app.examples else None)
            with gr.Row():
                with gr.Column():
                    pad = gr.Sketchpad(label="sketch (draw with the brush; eraser in the toolbar)", type="numpy",
                                       image_mode="RGBA", canvas_size=(512, 512), elem_id="s2i-pad")  # fmt: skip
                    sk_up = gr.File(label="…or upload a sketch", type="filepath", elem_id="s2i-sketch-upload")
                with gr.Column():
                    gal = gallery("style: click one (the first is chosen by default)")
                    st_up = gr.File(label="…or upload a style image", type="filepath", elem_id="s2i-style-upload")
            with gr.Row():
                stroke = gr.Radio(["auto", "none"], value="auto", label="lines: auto = redrawn at the model's line "
                                  "weight (any pencil, pen or chalk drawing); none = used as drawn",
                                  elem_id="s2i-stroke")  # fmt: skip
                noise = gr.Number(value=0, label="refiner noise (0: none, 1: as trained)", elem_id="s2i-noise")
                seed = gr.Number(value=0, precision=0, label="seed (the refiner's noise)", elem_id="s2i-seed")
                go = gr.Button("Generate", variant="primary", elem_id="s2i-generate")
            msg = gr.Markdown(elem_id="s2i-message")
            with gr.Row():
                seen = result("the sketch as the model sees it", "s2i-out-seen")
                out_ae = result("auto-encoder output", "s2i-out-ae")
                out_ref = result(refined_label, "s2i-out-refined")
            gal.select(on_select, None, selected)
            go.click(app.generate, [pad, sk_up, st_up, selected, stroke, seed, noise], [out_ae, out_ref, seen, msg])

        with gr.Tab("Mix"):
            gr.Markdown("One sketch in a mixture of 2–4 styles: **stitch** them into one reference (2 or 4, as in "
                        "the paper's Fig. 7) or average their **vector**s with the weights.")  # fmt: skip
            with gr.Row():
                mpad = gr.Sketchpad(label="sketch", type="numpy", image_mode="RGBA", canvas_size=(512, 512))
                msk_up = gr.File(label="…or upload a sketch", type="filepath")
            ups, ws = [], []
            with gr.Row():
                for i in range(4):
                    with gr.Column(min_width=120):
                        ups.append(gr.File(label=f"style {i + 1}", type="filepath"))
                        ws.append(gr.Slider(0, 1, value=1.0, step=0.05, label=f"weight {i + 1}"))
            mode = gr.Radio(list(MIX_MODES), value=MIX_MODES[0], label="mode")
            mgo = gr.Button("Mix", variant="primary")
            mmsg = gr.Markdown(elem_id="s2i-mix-message")
            mout = result("mixed", "s2i-out-mix")
            mgo.click(app.mix, [mpad, msk_up, mode, *ups, *ws], [mout, mmsg])

        with gr.Tab("Photo → sketch → restyle"):
            tsel = gr.State(0 if app.examples else None)
            with gr.Row():
                c_up = gr.File(label="photo (any image)", type="filepath")
                with gr.Column():
                    tgal = gallery("style")
                    tst_up = gr.File(label="…or upload a style image", type="filepath")
            n_snap = len(app.model.tom.names) if app.model.tom is not None else 1
            snap = gr.Slider(0, max(n_snap - 1, 0), value=0, step=1, label="TOM snapshot (drawing style)")
            tgo = gr.Button("Sketch and restyle", variant="primary")
            tmsg = gr.Markdown(elem_id="s2i-transfer-message")
            with gr.Row():
                tsk = result("TOM sketch", "s2i-out-sketch")
                tout = result("restyled", "s2i-out-transfer")
            tgal.select(on_select, None, tsel)
            tgo.click(app.transfer, [c_up, tst_up, tsel, snap], [tsk, tout, tmsg])
    page.queue(default_concurrency_limit=1)
    return page


def serve(model: str | None, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
          examples: str | None = None, block: bool = True):  # fmt: skip
    """Load the model once and serve the page (blocking unless ``block=False``)."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up pings are not news
    app = App(find_model(model), device, examples)
    page = build(app)
    print(f"sketch2image app: http://{host}:{port} (model {app.model_dir}, {app.model.size} px)")
    launch(page, host, port, block=block)
    return page


def launch(page, host: str = "127.0.0.1", port: int | None = None, *, block: bool = False) -> str:
    """Launch a built page with our theme and CSS (system fonts: nothing fetched); returns its URL."""
    gr = _require_gradio()
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=("ui-monospace", "monospace"))
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, theme=theme,
                            quiet=True, css=CSS)  # fmt: skip
    return url


__all__ = ["App", "build", "find_model", "launch", "serve"]
