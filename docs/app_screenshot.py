"""Make docs/app.png: the web app serving a model, a sketch drawn in Chromium, a style picked, the result.

    .venv/bin/python docs/app_screenshot.py --model runs/demo/model --out docs/app.png

Drives Debian's Chromium with Playwright the way tests/test_app.py does (no browser download).
"""

from __future__ import annotations

import argparse
import math
import shutil

from playwright.sync_api import sync_playwright

from sketch2image.app import App, build, launch

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def draw_face(tab, cx: float, cy: float, r: float) -> None:
    """A round face with eyes and a smile, in mouse strokes."""

    def stroke(points):
        tab.mouse.move(*points[0])
        tab.mouse.down()
        for p in points[1:]:
            tab.mouse.move(*p)
        tab.mouse.up()

    circle = lambda x, y, rr, a0=0.0, a1=2 * math.pi: [  # noqa: E731
        (x + rr * math.cos(a0 + (a1 - a0) * t / 40), y + rr * math.sin(a0 + (a1 - a0) * t / 40)) for t in range(41)
    ]
    stroke(circle(cx, cy, r))
    stroke(circle(cx - r * 0.35, cy - r * 0.25, r * 0.1))
    stroke(circle(cx + r * 0.35, cy - r * 0.25, r * 0.1))
    stroke(circle(cx, cy + r * 0.05, r * 0.5, 0.2 * math.pi, 0.8 * math.pi))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="docs/app.png")
    ap.add_argument("--style", type=int, default=3, help="which gallery image to pick")
    args = ap.parse_args()
    page = build(App(args.model))
    url = launch(page)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            tab = browser.new_page(viewport={"width": 1280, "height": 1000})
            tab.goto(url)
            tab.wait_for_selector("#s2i-generate", timeout=60_000)
            tab.get_by_role("button", name="Brush").first.click()
            box = tab.locator("#s2i-pad canvas").first.bounding_box()
            draw_face(tab, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, min(box["height"], 300) * 0.4)
            tab.locator(".s2i-gallery button.thumbnail-item").nth(args.style).click()
            tab.click("#s2i-generate")
            tab.locator("#s2i-out-refined img").wait_for(timeout=120_000)
            tab.wait_for_timeout(500)
            tab.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        page.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
