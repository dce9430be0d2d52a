"""``calibseg view``: open CalibSeg in the browser (a local web app on trame-slicer).

The app itself (package ``CalibSegWeb`` beside ``CalibSegLib``) runs on Slicer's MRML
through the Slicer module's logic; this library never imports Slicer, so the command only
finds the app, checks that its dependencies are installed, and runs it as a child process
with the same options.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys

from CalibSegLib.errors import CalibSegError

NAME = "view"
HELP = "open images, models and overlays in the browser (local web app on trame-slicer)"
EXAMPLE = "calibseg view --sample --model ~/models  (then open the printed http://127.0.0.1:… URL)"

#: Packages the web app needs (installed by the ``web`` extra and ``./run``).
WEB_PACKAGES = {"trame_slicer": "trame-slicer", "LayerDMLib": "slicer-layer-dm",
                "slicer": "slicer-core"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg view`` options to ``parser``."""
    parser.add_argument("image", nargs="?", default=None,
                        help="image file or DICOM series folder to open (default: none)")
    parser.add_argument("--sample", action="store_true", help="open the sample case at start")
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="model folder, or folder of model folders, to offer besides the "
                             "shipped models (repeatable)")
    parser.add_argument("--reference", default=None, metavar="LABELS",
                        help="reference label file of IMAGE, on the same grid")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; another than 127.0.0.1 needs --allow-remote")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow --host to be reachable from other computers (no login!)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--max-upload-mb", type=float, default=512.0,
                        help="largest upload accepted, in MiB")
    parser.add_argument("--device", default="cpu", help="inference device: cpu, cuda or auto")
    parser.add_argument("--form", choices=("auto", "full", "compact"), default="auto",
                        help="form of the predictions: full precision, compact (top-k, at most "
                             "16 bytes per voxel) or auto (compact when the full form would "
                             "exceed the memory budget)")


def app_root() -> str:
    """The folder holding the ``CalibSegWeb`` package (the repository root)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "CalibSegWeb", "__main__.py")):
        raise CalibSegError(
            f"The browser app (CalibSegWeb) is not beside CalibSegLib in {root}; run "
            "'calibseg view' from a CalibSeg source checkout (pip install -e '.[web]').")
    return root


def check_dependencies() -> None:
    """Raise :class:`CalibSegError` naming the browser app's packages that are missing."""
    missing = [dist for module, dist in WEB_PACKAGES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise CalibSegError(
            f"The browser app needs {', '.join(missing)}; install them with "
            "\"pip install -e '.[web]'\" (or ./run setup).")


def child_command(args: argparse.Namespace) -> list[str]:
    """``python -m CalibSegWeb`` with the options of ``args``."""
    command = [sys.executable, "-m", "CalibSegWeb"]
    if args.image:
        command.append(os.path.abspath(args.image))
    if args.sample:
        command.append("--sample")
    for folder in args.model:
        command += ["--model", os.path.abspath(os.path.expanduser(folder))]
    if args.reference:
        command += ["--reference", os.path.abspath(args.reference)]
    command += ["--host", args.host, "--port", str(args.port),
                "--max-upload-mb", str(args.max_upload_mb), "--device", args.device,
                "--form", args.form]
    if args.allow_remote:
        command.append("--allow-remote")
    return command


def run(args: argparse.Namespace) -> int:
    """Run ``calibseg view``; return the exit code."""
    if args.image and not os.path.exists(args.image):
        raise CalibSegError(f"{args.image}: no such file or folder; pass an image file or a "
                            "DICOM series folder.")
    if args.reference and not os.path.isfile(args.reference):
        raise CalibSegError(f"{args.reference}: no such file; pass the reference label file.")
    root = app_root()
    check_dependencies()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    child = subprocess.Popen(child_command(args), env=env)
    # A stop request for this process stops the app (which removes its private folder).
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got the same Ctrl+C and cleans up
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
