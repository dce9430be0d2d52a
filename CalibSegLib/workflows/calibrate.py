"""``calibseg calibrate``: fit a model's temperature on a validation cohort."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from CalibSegLib.cohort import fit_cohort_temperature, read_cohort
from CalibSegLib.files import atomic_path, uniform_file_modes
from CalibSegLib.models import load_model
from CalibSegLib.models.card import CARD_FILE
from CalibSegLib.workflows.console import progress_bar

NAME = "calibrate"


def run(args: argparse.Namespace) -> int:
    """``calibseg calibrate`` after its checks: fit the temperature, write the card."""
    model = load_model(args.model)
    cases = read_cohort(args.cohort)
    with progress_bar(NAME, getattr(args, "quiet", False)) as progress:
        temperature, info = fit_cohort_temperature(
            model, cases, device=args.device, progress=progress, predictions=args.predictions)
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
