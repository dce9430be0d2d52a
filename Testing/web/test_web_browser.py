"""``calibseg view`` end to end in a real headless browser (Debian's chromium via Playwright).

One scenario on the sample case with the shipped models: a model folder that is not a model
gives one message and the server keeps serving; Run shows the confidence overlay (view
pixels differ from the background-only view and follow the opacity); the reference gives
the metrics table; the temperature slider changes it; a click on a voxel shows its numbers;
compare shows two linked views. Nothing is downloaded: the system chromium is used, and
the test skips (saying so) where it is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

import numpy as np
import pytest

pytest.importorskip("slicer")
pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the web extra (playwright) is not installed")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if os.path.exists("/usr/bin/chromium") else None)
pytestmark = [
    pytest.mark.mrml, pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser installed (Debian: "
                       "apt-get install chromium; .ci/run installs it)"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from CalibSegWeb import browser_tour as tour  # noqa: E402

TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``calibseg view --sample`` on 127.0.0.1 and a free port; yields (url, private folder)."""
    not_a_model = tmp_path_factory.mktemp("not-a-model")
    (not_a_model / "readme.txt").write_text("no model here")
    try:
        process, url, folder = tour.start_app(["--model", str(not_a_model)])
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield url, folder
    process.terminate()
    assert process.wait(timeout=30) == 0
    assert folder and not os.path.exists(folder), "the private folder was not removed on exit"


views_image = tour.views_image
choose = tour.choose


def wait_for_new_image(page, previous: np.ndarray, timeout: float = 30.0) -> np.ndarray:
    """The views once they differ from ``previous`` (a render arrived), then settled."""
    deadline = time.monotonic() + timeout
    image = views_image(page)
    while np.abs(image - previous).mean() < 0.5 and time.monotonic() < deadline:
        time.sleep(0.3)
        image = views_image(page)
    time.sleep(1.0)  # let the last frames arrive
    return views_image(page)


def slider_key(page, box_id: str, key: str) -> None:
    thumb = page.locator(f"#{box_id} [role=slider]")
    thumb.focus()
    page.keyboard.press(key)


def wait_run_done(page) -> None:
    page.wait_for_function(
        "() => !document.querySelector('#progress') && "
        "['done', 'failed', 'cancelled'].includes("
        "document.querySelector('#run-status')?.textContent.trim())", timeout=TIMEOUT_MS)


def test_view_in_a_headless_browser(server):
    url, _ = server
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=tour.BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_selector("#input-name:has-text('mni-t1 sample')")
            time.sleep(2.0)
            background = views_image(page)
            assert background.std() > 5, "the sample image is not in the slice views"

            # a configured folder that is not a model: one message, the server keeps serving
            choose(page, "model-a", "not usable")
            page.click("#run")
            error = page.locator("#error-message")
            error.wait_for()
            assert "holds no model" in error.inner_text()
            page.reload()
            page.wait_for_selector("#run")

            # run the shipped model: the confidence overlay appears in the views
            choose(page, "model-a", "dicece (shipped)")
            page.click("#run")
            page.wait_for_selector("#overlay")
            wait_run_done(page)
            assert page.locator("#error-message").count() == 0
            shown = wait_for_new_image(page, background)
            assert np.abs(shown - background).mean() > 2.0
            # ... and follows the opacity
            slider_key(page, "opacity-box", "End")
            opaque = wait_for_new_image(page, shown)
            slider_key(page, "opacity-box", "Home")
            clear = wait_for_new_image(page, opaque)
            assert np.abs(opaque - background).mean() > np.abs(clear - background).mean() + 2.0

            # the reference gives the metrics table; the temperature changes it
            choose(page, "reference", "sample tissue labels")
            table = page.locator("#metrics-table")
            table.wait_for()
            before = table.inner_text()
            assert "ECE" in before and "A: dicece" in before
            page.wait_for_selector("#diagram")
            slider_key(page, "temperature-A", "End")
            page.wait_for_function(
                "(before) => document.querySelector('#metrics-table').innerText !== before",
                arg=before)
            # the page says what it shows: the visible slices first, the full volume at rest
            page.wait_for_function(
                "() => (document.querySelector('#temperature-state') || {innerText: ''})"
                ".innerText.includes('full volume')")
            after = table.inner_text()
            assert re.search(r"temperature\s+4(\.0+)?\b", after), after

            # click a voxel in the axial view: its probabilities and confidence
            box = page.locator("#views").bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
            probe = page.locator("#probe")
            probe.wait_for()
            page.wait_for_function(
                "() => document.querySelector('#probe').innerText.includes('confidence')")
            text = probe.inner_text()
            assert "grey matter" in text and "white matter" in text
            numbers = [float(v) for v in re.findall(r"confidence (\d\.\d+)", text)]
            assert numbers and all(1 / 3 - 1e-6 <= v <= 1.0 for v in numbers)

            # compare: model B, then two linked axial views side by side
            choose(page, "model-b", "dicece-hardace")
            page.click("#run")
            page.wait_for_selector("#temperature-B")
            wait_run_done(page)
            page.locator("#compare").check()
            page.wait_for_function(
                "() => [...document.querySelectorAll('#views img.image-display-area')]"
                ".filter(e => e.offsetParent !== null).length === 2")
            assert page.locator("#error-message").count() == 0
        finally:
            browser.close()
