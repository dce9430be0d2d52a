"""``calibseg demo``: the main job on the embedded sample case (options and checks)."""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.files import check_output_location, refuse_overwrite

NAME = "demo"
HELP = ("run two demo models on the embedded sample case, compare their calibration, explain "
        "them and write an HTML report (about 2 minutes on 2 CPU cores)")
EXAMPLE = "calibseg demo -o out/demo"
#: The demo's own folder: refreshed on every run without --overwrite.
DEFAULT_OUTPUT = "out/demo"
#: The report's own files (an existing one elsewhere is replaced only with --overwrite).
REPORT_FILES = ("report.html", "metrics.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg demo`` options to ``parser``."""
    parser.add_argument("-o", "--output", default=None,
                        help=f"output folder (default: {DEFAULT_OUTPUT}, the demo's own folder, "
                             "refreshed on every run; another existing report is replaced only "
                             "with --overwrite)")
    parser.add_argument("--shift-seeds", type=int, nargs="+", default=[1001, 1002, 1003],
                        help="seeds of the held-out shifted variants (never used in training)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="model folders (default: the shipped dicece and dicece-softace)")
    parser.add_argument("--no-faithfulness", action="store_true",
                        help="skip the faithfulness measurement of the explanation (about 80 "
                             "of the demo's seconds)")
    add_overwrite_argument(parser)


def check(args: argparse.Namespace) -> None:
    """Models and output before anything is loaded (no torch import)."""
    if args.output is None:
        args.output = DEFAULT_OUTPUT
        check_output_location(args.output)
    else:
        refuse_overwrite([os.path.join(args.output, f) for f in REPORT_FILES], args.overwrite)
    for folder in args.models or ():
        _checks.model_card(folder)
