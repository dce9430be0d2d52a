"""``calibseg evaluate``: calibration (ECE / ACE / MCE) and Dice of saved probabilities.

The probabilities are a ``.npy`` / ``.npz`` array ``(C, Z, Y, X)``, a vector image
(NIfTI, NRRD, MetaImage) with one component per class, or a prediction file of
``predict`` (``<stem>_prediction.npz``, either form: the statistics of a compact one
come from its top-k scores without expanding them); the reference is a label
image on the same grid. Class names come from ``--classes``, else from the
sidecar ``predict`` (``<stem>_prediction.json``) or ``sample-data`` (``<stem>.json``)
wrote beside the probabilities. Options and checks; the work is
:mod:`CalibSegLib.workflows.evaluate`.
"""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import refuse_overwrite

NAME = "evaluate"
HELP = ("measure calibration (ECE, ACE = average calibration error, MCE) and Dice of "
        "class probabilities against a reference segmentation")
EXAMPLE = ("calibseg evaluate --probs out/pred/mni-t1_image_probs.nii.gz --reference "
           "out/sample/mni-t1_labels.nii.gz -o out/eval")

#: Keys of the summary printed with ``--json``.
SUMMARY_KEYS = ("ece", "ace", "mce", "mce_raw", "marginal_ece", "marginal_ace", "marginal_mce",
                "marginal_mce_raw", "per_class", "dice", "n_bins", "min_bin_fraction",
                "min_bin_count", "reduction", "include_background", "nll", "brier", "n_voxels")
#: Files ``evaluate -o`` writes (the cohort ones only with --model/--cohort).
OUTPUT_FILES = ("stats.json", "metrics.json", "reliability.png")
COHORT_FILES = ("cases.csv", "dataset_reliability_histogram.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg evaluate`` options to ``parser``."""
    parser.add_argument("--probs",
                        help="class probabilities: .npy/.npz (C, Z, Y, X), a vector image, or "
                             "the <stem>_prediction.npz file predict writes")
    parser.add_argument("--reference", help="reference label image (with --probs)")
    parser.add_argument("--model", help="model folder (with --cohort)")
    parser.add_argument("--cohort",
                        help="folder of <id>_image/<id>_labels pairs or a CSV (with --model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="with --model: auto uses CUDA when available")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names, background first (default: from the "
                             "prediction's JSON sidecar beside --probs, else class 0, 1, …)")
    parser.add_argument("--bins", type=int, default=20, help="confidence bins")
    parser.add_argument("--include-background", action="store_true",
                        help="let class 0 enter the class means")
    parser.add_argument("--reduction", choices=["macro", "micro"], default="macro",
                        help="macro: per image, then the mean; micro: images pooled first")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("-o", "--output", default=None,
                        help="folder for stats.json, metrics.json and reliability.png "
                             "(default: print only)")
    add_overwrite_argument(parser)


def check(args: argparse.Namespace) -> None:
    """Options and files, before anything is read or a model loaded (no torch import)."""
    if args.model or args.cohort:
        if not (args.model and args.cohort) or args.probs or args.reference:
            raise CalibSegError("Use either --model DIR --cohort DIR_OR_CSV, or --probs FILE "
                                "--reference FILE.")
        _checks.model_card(args.model)
        _checks.input_file(args.cohort, "--cohort")
        if args.classes:
            raise CalibSegError("--classes is for --probs; a model brings its class names.")
    elif args.probs and args.reference:
        _checks.input_file(args.probs, "--probs")
        if not args.probs.lower().endswith((".npy", ".npz")):
            _checks.input_image(args.probs)
        _checks.input_image(args.reference)
    else:
        raise CalibSegError("Give --probs FILE --reference FILE, or --model DIR --cohort DIR.")
    if args.bins < 1:
        raise CalibSegError(f"--bins {args.bins}: give at least 1 bin.")
    if args.output:
        names = OUTPUT_FILES + (COHORT_FILES if args.model else ())
        refuse_overwrite([os.path.join(args.output, n) for n in names], args.overwrite)
