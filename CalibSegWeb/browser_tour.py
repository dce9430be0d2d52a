"""Drive ``calibseg view`` in headless chromium: page screenshots and two latencies.

``python -m CalibSegWeb.browser_tour OUT_DIR`` starts the app on the sample case, runs the
first shipped model, chooses the sample reference, clicks a voxel, compares A and B, and
writes ``overview.png``, ``compare.png`` and ``timings.json`` (seconds from pressing Run to
the confidence overlay in the views, and from a temperature change to the new view). It uses
the system chromium through Playwright; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import numpy as np

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]


def start_app(extra: list[str] | None = None, timeout: float = 120.0):
    """``(process, url, private folder)`` of ``calibseg view --sample [extra]`` on a free
    loopback port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "CalibSegLib.cli", "view", "--sample", "--port", "0",
         *(extra or [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    folder = None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        found = re.search(r"go to (\S+) \(removed on exit\)", line)
        folder = found[1] if found else folder
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if match:
            return process, match[1], folder
    process.kill()
    raise RuntimeError("calibseg view did not start")


def views_image(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("#views").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def seconds_until_views_change(page, before: np.ndarray, timeout: float = 120.0) -> float:
    """Seconds until the views' pixels differ from ``before`` (a new frame arrived)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if np.abs(views_image(page) - before).mean() > 0.5:
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError("the views did not change")


def choose(page, select_id: str, text: str) -> None:
    page.locator(f"#{select_id}").click(force=True)
    page.locator(".v-overlay .v-list-item", has_text=text).first.click()


def tour(url: str, out: str, chromium: str = "/usr/bin/chromium") -> dict:
    """Screenshots into ``out`` and the latencies (seconds) of one session at ``url``."""
    from playwright.sync_api import sync_playwright

    os.makedirs(out, exist_ok=True)
    timings = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#input-name:has-text('mni-t1 sample')")
            time.sleep(1.0)
            before = views_image(page)
            page.click("#run")
            timings["run_to_first_overlay_s"] = seconds_until_views_change(page, before)
            page.wait_for_selector("#overlay")
            choose(page, "reference", "sample tissue labels")
            page.wait_for_selector("#diagram")
            time.sleep(1.0)
            before = views_image(page)
            page.locator("#temperature-A [role=slider]").focus()
            page.keyboard.press("End")
            timings["temperature_to_view_s"] = seconds_until_views_change(page, before)
            box = page.locator("#views").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.45)
            page.wait_for_selector("#probe")
            time.sleep(1.0)
            page.screenshot(path=os.path.join(out, "overview.png"))
            choose(page, "model-b", "dicece-hardace")
            page.click("#run")
            page.wait_for_selector("#temperature-B")
            page.locator("#compare").check()
            time.sleep(3.0)
            page.screenshot(path=os.path.join(out, "compare.png"))
        finally:
            browser.close()
    with open(os.path.join(out, "timings.json"), "w", encoding="utf-8") as fh:
        json.dump(timings, fh, indent=2)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CalibSegWeb.browser_tour",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the screenshots and timings.json")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable")
    args = parser.parse_args(argv)
    process, url, _ = start_app()
    try:
        print(json.dumps(tour(url, args.out, args.chromium), indent=2))
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
