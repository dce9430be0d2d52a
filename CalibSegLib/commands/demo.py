"""``calibseg demo``: the main job on the embedded sample case."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = ("run two demo models on the embedded sample case, compare their calibration, explain "
        "them and write an HTML report")
EXAMPLE = "calibseg demo -o out/demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="out/demo", help="output folder")
    parser.add_argument("--shift-seeds", type=int, nargs="+", default=[1001, 1002, 1003],
                        help="seeds of the held-out shifted variants (never used in training)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="model folders (default: the shipped dicece and dicece-softace)")
    parser.add_argument("--no-faithfulness", action="store_true",
                        help="skip the faithfulness measurement of the explanation")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from CalibSegLib.report.demo import run_demo

    quiet = getattr(args, "quiet", False)
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
        print(f"  {name:<16} Dice {t1['mean_dice']:.3f} | marginal ACE {t1['marginal_ace']:.3f}"
              f" -> {fitted['marginal_ace']:.3f} at T={fitted['temperature']:.2f} | "
              f"top-label ECE {t1['ece']:.3f} -> {fitted['ece']:.3f} | "
              f"ACE vs soft reference {t1['soft_marginal_ace']:.3f}")
    if summary.get("explanation"):
        verdict = "beats" if summary["explanation"]["beats_random"] else "does NOT beat"
        print(f"  prototype explanation {verdict} the random baseline")
    print(f"report: {summary['report']}")
    return 0
