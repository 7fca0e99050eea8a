"""Open a self-contained HTML file in real headless Chromium and report what a reader would see.

Used by the report tests (evaluation report, audit, CAM gallery). Chromium is Debian's `chromium`
(.ci/run installs it); Playwright drives it without downloading a browser of its own. Every request
other than the file itself is recorded and aborted, so a report that reaches for the network fails
its test instead of quietly loading something.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Rendered:
    screenshot: Path
    requests: list[str] = field(default_factory=list)  # every URL fetched besides the page itself
    images: list[dict] = field(default_factory=list)  # per <img>: src prefix, complete, natural size
    console_errors: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def broken_images(self) -> list[dict]:
        return [img for img in self.images if not img["complete"] or img["width"] == 0]

    def is_blank(self) -> bool:
        """True when the screenshot is (almost) one flat colour: nothing was drawn."""
        pixels = np.asarray(Image.open(self.screenshot).convert("L"), dtype=np.float32)
        return float(pixels.std()) < 2.0


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("headless Chromium is needed: apt-get install -y chromium (.ci/run does it)")
    return path


def render(html_path: Path, screenshot: Path, *, width: int = 1200) -> Rendered:
    from playwright.sync_api import sync_playwright

    page_url = Path(html_path).resolve().as_uri()
    result = Rendered(screenshot=Path(screenshot))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})

            def route(request_route) -> None:
                url = request_route.request.url
                if url == page_url:
                    request_route.continue_()
                else:
                    result.requests.append(url)
                    request_route.abort()

            page.route("**/*", route)
            page.on("console", lambda msg: msg.type == "error" and result.console_errors.append(msg.text))
            page.goto(page_url, wait_until="load")
            result.images = page.evaluate(
                "Array.from(document.images).map(i => ({src: i.src.slice(0, 30), complete: i.complete,"
                " width: i.naturalWidth, height: i.naturalHeight}))"
            )
            result.text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result
