"""The web app: callbacks without a browser, then the real page driven in Debian's Chromium.

The browser tests need the system Chromium (`apt-get install chromium`; `scripts/test.sh`
installs it when it can). Playwright only drives it: no browser is ever downloaded.
"""

import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sketch2image.app import App, build, find_model, launch, sketch_from_editor
from sketch2image.cli import main

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def chromium() -> str:
    path = os.environ.get("S2I_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the web-app tests need Debian's Chromium: `sudo apt-get install chromium` (or set S2I_CHROMIUM)")
    return path


@pytest.fixture
def app(model_dir):
    return App(model_dir)


def _drawing(size=300) -> dict:
    """A Sketchpad value: black strokes on a transparent RGBA canvas."""
    arr = np.zeros((size, size, 4), np.uint8)
    arr[60:240, 60:66, 3] = arr[60:66, 60:240, 3] = arr[100:200, 150:156, 3] = 255
    return {"background": None, "layers": [arr], "composite": arr}


# --- callbacks --------------------------------------------------------------------------------------


def test_generate_from_a_drawing_any_size(app, image_dir):
    ae, refined, seen, msg = app.generate(_drawing(300), None, None, 0)
    assert msg == "" and ae.size == refined.size == seen.size == (app.model.size, app.model.size)
    assert np.asarray(refined).std() > 0 and not np.array_equal(np.asarray(ae), np.asarray(refined))
    grey = np.asarray(seen.convert("L"))
    assert grey[0, 0] == 255 and grey.min() < 64  # the preview: dark normalised lines on white
    style = str(sorted(image_dir.glob("*.png"))[-1])
    uploaded, _, _, msg2 = app.generate(_drawing(97), None, style, None)
    both = app.generate(_drawing(97), None, style, 0)[0]  # an upload and a gallery pick: the upload wins
    gallery = app.generate(_drawing(97), None, None, 0)[0]
    assert msg2 == "" and uploaded.size == ae.size and np.array_equal(np.asarray(both), np.asarray(uploaded))
    assert np.abs(np.asarray(both, np.int16) - np.asarray(gallery, np.int16)).max() > 10  # the AE follows the style
    *_, as_drawn, msg3 = app.generate(_drawing(300), None, None, 0, "none")
    assert msg3 == "" and not np.array_equal(np.asarray(as_drawn), np.asarray(seen))


def test_callbacks_report_problems_as_messages(app, tmp_path):
    blank = {"background": None, "layers": [], "composite": np.zeros((50, 50, 4), np.uint8)}
    assert app.generate(blank, None, None, 0) == (
        None,
        None,
        None,
        "**⚠ the canvas is blank: draw a sketch (or upload one) first**",
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    *_, msg = app.generate(_drawing(), None, str(notes), 0)
    assert "style upload notes.txt: cannot read image" in msg and str(tmp_path) not in msg
    white = tmp_path / "white.png"
    Image.new("RGB", (64, 64), "white").save(white)
    *_, msg = app.generate(None, str(white), None, 0)
    assert "blank" in msg
    assert "at least two" in app.mix(_drawing(), None, "stitch", str(white), None, None, None, 1, 1, 1, 1)[-1]
    assert "upload a photo" in app.transfer(None, None, 0, 0)[-1]


def test_mix_and_transfer(app, image_dir, tmp_path):
    styles = [str(p) for p in sorted(image_dir.glob("*.png"))[:4]]
    img, msg = app.mix(_drawing(), None, "vector", *styles[:2], None, None, 0.3, 0.7, 1, 1)
    assert msg == "" and img.size == (app.model.size, app.model.size)
    stitched, msg = app.mix(_drawing(), None, "stitch", *styles, 1, 1, 1, 1)
    assert msg == "" and stitched is not None
    assert "2 or 4" in app.mix(_drawing(), None, "stitch", *styles[:3], None, 1, 1, 1, 1)[-1]
    for k, g in enumerate(app.model.tom.generators):  # a 4-step TOM draws near-white: darken each snapshot's
        torch.nn.init.constant_(g.body[-1].bias, -1.0 - k)  # output so that it draws, each its own grey
    sketch, out, msg = app.transfer(styles[0], None, 0, 0)
    assert msg == "" and sketch.size == out.size == (app.model.size, app.model.size)
    last = len(app.model.tom.names) - 1
    clamped, by_last, first = (app.transfer(styles[0], None, 0, k)[0] for k in (99, last, 0))
    assert np.array_equal(np.asarray(clamped), np.asarray(by_last))  # snapshot 99 is clamped to the last one
    assert not np.array_equal(np.asarray(by_last), np.asarray(first))  # ... which draws otherwise than the first
    assert "photo" in app.transfer(None, styles[1], None, 0)[-1]


def test_concurrent_users_get_the_same_answers(app):
    want = app.generate(_drawing(), None, None, 1)[1]
    got, errors = [], []

    def user():
        try:
            got.append(app.generate(_drawing(), None, None, 1)[1])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=user) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 4
    assert all(np.array_equal(np.asarray(g), np.asarray(want)) for g in got)


def test_sketch_from_editor():
    assert sketch_from_editor(None) is None
    assert sketch_from_editor({"composite": np.zeros((8, 8, 4), np.uint8)}) is None
    assert sketch_from_editor(_drawing(260)).size == (260, 260)


def test_app_without_a_model_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="scripts/demo.sh"):
        find_model(None)
    assert main(["app"]) == 2
    assert "scripts/demo.sh" in capsys.readouterr().err


# --- the real page in Chromium ---------------------------------------------------------------------


@pytest.fixture
def browser_page(app):
    from playwright.sync_api import sync_playwright

    page = build(app)
    url = launch(page)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1300, "height": 1100})
        tab.goto(url)
        tab.wait_for_selector("#s2i-generate", timeout=60_000)
        try:
            yield tab
        finally:
            browser.close()
            page.close()


def _draw_strokes(tab) -> None:
    tab.get_by_role("button", name="Brush").first.click()
    box = tab.locator("#s2i-pad canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for x0, y0, x1, y1 in [(-80, -80, 80, -80), (80, -80, 80, 80), (80, 80, -80, 80), (-80, -60, 60, 70)]:
        tab.mouse.move(cx + x0, cy + y0)
        tab.mouse.down()
        for t in np.linspace(0, 1, 10):
            tab.mouse.move(cx + x0 + (x1 - x0) * t, cy + y0 + (y1 - y0) * t)
        tab.mouse.up()


def test_browser_draw_pick_style_generate(browser_page, app):
    tab = browser_page
    _draw_strokes(tab)
    tab.locator(".s2i-gallery button.thumbnail-item").nth(1).click()
    tab.click("#s2i-generate")
    img = tab.locator("#s2i-out-refined img")
    img.wait_for(timeout=60_000)
    result = Image.open(io.BytesIO(tab.request.get(img.get_attribute("src")).body()))
    assert result.size == (app.model.size, app.model.size)
    assert np.asarray(result.convert("RGB")).std() > 1  # not a blank picture
    assert tab.locator("#s2i-out-ae img").count() == 1  # the auto-encoder output beside it
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "app_draw.png"), full_page=True)


def test_browser_shows_readable_errors(browser_page, tmp_path):
    tab = browser_page
    tab.click("#s2i-generate")  # nothing drawn yet
    tab.wait_for_selector("#s2i-message:has-text('canvas is blank')", timeout=60_000)
    _draw_strokes(tab)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("this is text, not pixels")
    tab.locator("#s2i-style-upload input[type=file]").set_input_files(str(bad))
    tab.wait_for_selector("#s2i-style-upload :text('not_an_image.png')", timeout=60_000)
    tab.click("#s2i-generate")
    msg = tab.locator("#s2i-message:has-text('cannot read image')")
    msg.wait_for(timeout=60_000)
    assert "style upload not_an_image.png" in msg.inner_text() and "/tmp/gradio" not in msg.inner_text()
    assert tab.locator("#s2i-out-refined img").count() == 0  # no partial output
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "app_error.png"), full_page=True)
