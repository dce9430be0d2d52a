#!/usr/bin/env python
"""Take the README's browser screenshots of ``calibseg view`` in headless chromium.

Starts the app on the sample case and drives it like a user with
``CalibSegWeb.browser_tour`` (run the first shipped model with the confidence overlay,
choose the sample reference, move model A's temperature, click a voxel, compare A and B),
then writes the two page screenshots as ``browser.png`` (overlay, metrics, voxel probe) and
``browser-compare.png`` (A and B side by side), reduced to a 256-colour palette so that each
stays small. Uses the system chromium through Playwright; nothing is downloaded.

Usage::

    .venv/bin/python scripts/make_browser_screenshots.py [-o Resources/Screenshots]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from CalibSegWeb import browser_tour  # noqa: E402

# tour screenshot -> README screenshot
NAMES = {"overview.png": "browser.png", "compare.png": "browser-compare.png"}


def save_small_png(source: str, target: str) -> int:
    """Write ``source`` as a 256-colour palette PNG at ``target`` (atomically); its bytes."""
    from PIL import Image

    with Image.open(source) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                              dither=Image.Dither.NONE)
    folder = os.path.dirname(os.path.abspath(target))
    fd, temporary = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        small.save(temporary, format="PNG", optimize=True)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
    return os.path.getsize(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default=os.path.join(ROOT, "Resources", "Screenshots"),
                        help="folder for browser.png and browser-compare.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable")
    args = parser.parse_args(argv)
    if not os.path.exists(args.chromium):
        parser.error(f"no browser at {args.chromium}: install chromium (Debian: apt-get "
                     "install chromium) or pass --chromium PATH")
    os.makedirs(args.out, exist_ok=True)
    process, url, _ = browser_tour.start_app()
    try:
        with tempfile.TemporaryDirectory() as shots:
            timings = browser_tour.tour(url, shots, args.chromium)
            for shot, name in NAMES.items():
                target = os.path.join(args.out, name)
                size = save_small_png(os.path.join(shots, shot), target)
                print(f"wrote {target} ({size / 1024:.0f} KB)")
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
