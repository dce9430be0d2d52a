"""``calibseg calibrate``: fit a model's temperature on a validation cohort (options and checks)."""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import refuse_overwrite

NAME = "calibrate"
HELP = ("fit the temperature on validation cases and write it into a copy of the model "
        "folder (or the folder itself with --in-place)")
EXAMPLE = "calibseg calibrate --model Resources/Models/dicece --cohort out/val -o out/dicece-cal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg calibrate`` options to ``parser``."""
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--cohort", required=True,
                        help="folder of <id>_image/<id>_labels pairs, or a CSV (image, labels)")
    parser.add_argument("-o", "--output",
                        help="new model folder (an existing one only with --overwrite)")
    parser.add_argument("--in-place", action="store_true",
                        help="update the model folder's card instead of writing a copy")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available")
    parser.add_argument("--predictions", default=None, metavar="DIR",
                        help="folder of <image stem>_prediction.npz files that predict "
                             "--save-prediction (or a compact predict) wrote for the cohort's "
                             "images; those cases are not run again")
    add_overwrite_argument(parser)


def check(args: argparse.Namespace) -> None:
    """Options, model folder, cohort and output, before any model is loaded (no torch)."""
    if bool(args.output) == bool(args.in_place):
        raise CalibSegError("Give either -o NEW_FOLDER (a calibrated copy) or --in-place.")
    _checks.model_card(args.model)
    _checks.input_file(args.cohort, "--cohort")
    if args.predictions and not os.path.isdir(args.predictions):
        raise CalibSegError(f"--predictions {args.predictions}: no such folder.")
    if args.output:
        if os.path.abspath(args.output) == os.path.abspath(args.model):
            raise CalibSegError("-o is the model folder itself; use --in-place to update it.")
        refuse_overwrite([args.output], args.overwrite)
