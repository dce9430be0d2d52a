"""``calibseg calibrate``: fit a model's temperature on a validation cohort."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

NAME = "calibrate"
HELP = ("fit the temperature on validation cases and write it into a copy of the model "
        "folder (or the folder itself with --in-place)")
EXAMPLE = "calibseg calibrate --model Resources/Models/dicece --cohort out/val -o out/dicece-cal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import refuse_overwrite

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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    check(args)
    from CalibSegLib.cohort import fit_cohort_temperature, read_cohort
    from CalibSegLib.io import atomic_path, uniform_file_modes
    from CalibSegLib.models import load_model
    from CalibSegLib.models.card import CARD_FILE

    model = load_model(args.model)
    cases = read_cohort(args.cohort)
    bar = tqdm(total=len(cases), disable=getattr(args, "quiet", False), file=sys.stderr,
               desc="calibrate")
    temperature, info = fit_cohort_temperature(
        model, cases, device=args.device, progress=lambda f, m: bar.update(
            round(f * len(cases)) - bar.n), predictions=args.predictions)
    bar.close()
    card = model.card.replace(temperature=float(temperature))
    if args.in_place:
        with atomic_path(os.path.join(args.model, CARD_FILE)) as tmp, \
                open(tmp, "w", encoding="utf-8") as fh:
            fh.write(card.to_json())
        target = args.model
    else:
        parent = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".calibseg-", dir=parent)
        try:
            folder = os.path.join(staging, "model")
            shutil.copytree(args.model, folder)
            with open(os.path.join(folder, CARD_FILE), "w", encoding="utf-8") as fh:
                fh.write(card.to_json())
            uniform_file_modes(folder)
            if os.path.lexists(args.output):  # only reached with --overwrite
                os.replace(args.output, os.path.join(staging, "previous"))
            os.replace(folder, args.output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        target = args.output
    saved = f" ({info['saved']} from saved predictions)" if info.get("saved") else ""
    print(f"temperature {temperature:.4f} (was {model.temperature:.4f}) fitted on "
          f"{info['cases']} cases{saved}, {info['voxels']} voxels; NLL per voxel at T=1 "
          f"{info['nll_at_T1']:.4f}, at the fitted grid point "
          f"{info['nll_at_fitted_grid_point']:.4f}")
    print(f"model: {target}")
    return 0
