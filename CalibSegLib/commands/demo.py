"""``calibseg demo``: the main job on the embedded sample case."""

from __future__ import annotations

import argparse
import os
import sys

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

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
    from CalibSegLib.cli import check_output_location
    from CalibSegLib.io import refuse_overwrite

    if args.output is None:
        args.output = DEFAULT_OUTPUT
        check_output_location(args.output)
    else:
        refuse_overwrite([os.path.join(args.output, f) for f in REPORT_FILES], args.overwrite)
    for folder in args.models or ():
        _checks.model_card(folder)


def run(args: argparse.Namespace) -> int:
    check(args)
    from tqdm import tqdm

    from CalibSegLib.report.demo import run_demo

    quiet = getattr(args, "quiet", False)
    if not quiet:
        print("calibseg demo: about 2 minutes on 2 CPU cores, most of it scoring the "
              "explanation's faithfulness" + ("" if args.no_faithfulness else
                                              " (--no-faithfulness skips that)"),
              file=sys.stderr)
    bar = tqdm(total=100, disable=quiet, file=sys.stderr,
               bar_format="{percentage:3.0f}%|{bar:30}| {desc}")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(100 * fraction)
        bar.set_description_str(message[:70])

    try:
        summary = run_demo(args.output, tuple(args.shift_seeds), args.models,
                           faithfulness=not args.no_faithfulness, progress=progress)
    finally:
        bar.close()
    print(f"CalibSeg demo ({summary['seconds']} s) on {', '.join(summary['cases'])}")
    for name, numbers in summary["models"].items():
        t1, fitted = numbers["T=1"], numbers["fitted"]
        soft = (f" | ACE vs soft reference {t1['soft_marginal_ace']:.3f}"
                if "soft_marginal_ace" in t1 else "")
        print(f"  {name:<16} Dice {t1['mean_dice']:.3f} | marginal ACE {t1['marginal_ace']:.3f}"
              f" -> {fitted['marginal_ace']:.3f} at T={fitted['temperature']:.2f} | "
              f"top-label ECE {t1['ece']:.3f} -> {fitted['ece']:.3f}, "
              f"MCE {t1['mce']:.3f} -> {fitted['mce']:.3f}{soft}")
    if summary.get("explanation"):
        verdict = "beats" if summary["explanation"]["beats_random"] else "does NOT beat"
        print(f"  the explanation map {verdict} the random baseline")
    print(f"report: {summary['report']}")
    return 0
