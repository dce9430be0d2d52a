#!/usr/bin/env python
"""Benchmark of ``calibseg view`` in a real headless browser (Debian's chromium via Playwright).

Each repetition starts the app on the 2 mm sample case with the shipped models on a free
loopback port and drives it with ``CalibSegWeb.browser_tour`` like a user:

- time to first overlay: seconds from pressing **Run** (first shipped model) to the first
  frame of the slice views in the page that differs from the background-only view (model
  loading and inference included; the app runs in its own process);
- temperature-to-view latency: seconds from moving model A's temperature slider (sample
  reference chosen) to the new frame in the page (the app previews the shown planes at once;
  volume, metrics table and diagram follow once the slider rests).

Both are measured from page screenshots polled every 0.05 s, so they include the server's
render, the image stream and the page's paint. Reported as the median over the repetitions
(3; ``--quick``: 1); nothing is compared against a target.

``run(quick)`` returns rows ``{name, value, target, unit}`` for ``bench/run``; run this file
directly for a table.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CHROMIUM = "/usr/bin/chromium"


def one_session(chromium: str = CHROMIUM) -> dict:
    """Latencies (seconds) of one tour of a freshly started ``calibseg view --sample``."""
    from CalibSegWeb import browser_tour

    process, url, _ = browser_tour.start_app()
    try:
        with tempfile.TemporaryDirectory() as shots:
            return browser_tour.tour(url, shots, chromium)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(quick: bool = False) -> list[dict]:
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"no browser at {CHROMIUM} (Debian: apt-get install chromium)")
    repeats = 1 if quick else 3
    sessions = []
    for index in range(repeats):
        sessions.append(one_session())
        print(f"[bench] browser session {index + 1}/{repeats}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in sessions[-1].items()), file=sys.stderr)
    first = statistics.median(s["run_to_first_overlay_s"] for s in sessions)
    temperature = statistics.median(s["temperature_to_view_s"] for s in sessions)
    what = f"2 mm sample, median of {repeats}"
    return [
        {"name": f"Run -> first overlay, page ({what})", "value": first,
         "target": None, "unit": "s"},
        {"name": f"temperature -> new view, page ({what})", "value": temperature,
         "target": None, "unit": "s"},
    ]


if __name__ == "__main__":
    from timing import print_rows

    print_rows(run(quick="--quick" in sys.argv))
