"""The demo: the shipped models on the embedded sample case, compared, explained, reported."""

from __future__ import annotations

import argparse
import os
import sys

from CalibSegLib.data import sample_case
from CalibSegLib.errors import CalibSegError
from CalibSegLib.progress import ProgressCallback
from CalibSegLib.workflows.console import progress_bar
from CalibSegLib.workflows.report import run_report

NAME = "demo"

DEMO_MODELS = ("dicece", "dicece-softace")


def models_folder() -> str:
    """``Resources/Models`` of the source tree or of the installed extension."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(here, "Resources", "Models"),
                      os.path.join(os.path.dirname(here), "Resources", "Models")):
        if os.path.isdir(candidate):
            return candidate
    raise CalibSegError("The demo models (Resources/Models) were not found next to CalibSegLib; "
                        "run from the CalibSeg source tree or pass --models.")


def run_demo(output: str = "out/demo", shift_seeds=(1001, 1002, 1003), models=None,
             faithfulness: bool = True, progress: ProgressCallback | None = None) -> dict:
    """Run the demo and write ``report.html`` and ``metrics.json`` into ``output``.

    The embedded 2 mm MNI case and its shifted variants ``shift_seeds`` (never used in
    training), the shipped demo models unless ``models`` are given. Returns a summary
    dict (report path, per-model key numbers, timings).
    """
    folders = list(models) if models else [os.path.join(models_folder(), m) for m in DEMO_MODELS]
    cases = [sample_case("mni-t1", 2.0)] + [sample_case("mni-t1", 2.0, shift_seed=s)
                                            for s in shift_seeds]
    return run_report(folders, cases, output, focus_index=1 if len(cases) > 1 else 0,
                      faithfulness=faithfulness, progress=progress,
                      subtitle=f"{len(folders)} models on the MNI ICBM152 T1 sample case (2 mm) "
                               f"and {len(cases) - 1} held-out shifted variants")


def run(args: argparse.Namespace) -> int:
    """``calibseg demo`` after its checks: run the demo and print its key numbers."""
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print("calibseg demo: about 2 minutes on 2 CPU cores, most of it scoring the "
              "explanation's faithfulness" + ("" if args.no_faithfulness else
                                              " (--no-faithfulness skips that)"),
              file=sys.stderr)
    with progress_bar(NAME, quiet) as progress:
        summary = run_demo(args.output, tuple(args.shift_seeds), args.models,
                           faithfulness=not args.no_faithfulness, progress=progress)
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
