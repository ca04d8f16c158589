"""The screenshot of the web page (docs/web_page.png, shown by the README and the docs), from a running server:
`bash docs/make_figures.sh` runs it with the other figures; alone, `make serve` in one shell, then
`.venv/bin/python docs/page_screenshot.py` (Playwright and Debian's chromium, as the browser tests use them).

It fills the panels with seeded requests, so the picture is the same every time for the same weights."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

OUT = Path(__file__).parent / "web_page.png"


def fill_panels(page) -> None:
    def run(panel: str) -> None:
        page.click(f"{panel} form button[type=submit]")
        page.wait_for_selector(f"{panel} .outcome .note, {panel} .outcome .error")

    page.fill("#samples-n", "16")
    page.fill("#samples-seed", "1")
    run("#samples")
    page.select_option("#acgan-toggle", "Smiling")
    page.fill("#acgan-n", "5")
    page.fill("#acgan-seed", "1")
    run("#acgan")
    page.fill("#infogan-rows", "3")
    page.fill("#infogan-seed", "1")
    run("#infogan")
    page.fill("#glow-n", "5")
    page.fill("#glow-seed", "1")
    run("#glow-samples")
    page.fill("#interpolate-steps", "6")
    run("#interpolate")
    run("#manipulate")
    page.click("#uploads button[value=reconstruct]")
    page.wait_for_selector("#uploads .outcome .note, #uploads .outcome .error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--scale", type=float, default=0.6, help="shrink the 1280-px-wide page by this factor")
    args = parser.parse_args()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(args.url)
        page.wait_for_selector("#server-status[data-state=ready]")
        page.evaluate("window.facegenReady")
        fill_panels(page)
        # everything but the model cards, which go on for pages
        height = page.evaluate("document.querySelector('#models').offsetTop + 420")
        shot = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height})
        browser.close()

    image = Image.open(io.BytesIO(shot)).convert("RGB")
    image = image.resize((round(image.width * args.scale), round(image.height * args.scale)), Image.LANCZOS)
    image.quantize(colors=256).save(args.out, optimize=True)  # a palette PNG: a fraction of the RGB size
    print(f"{args.out} {image.width}x{image.height}, {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
