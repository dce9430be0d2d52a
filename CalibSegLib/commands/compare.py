"""``calibseg compare``: two models on one image, metrics and overlaid diagrams.

Each ``--model`` is a model folder (run on the image) or a prediction file that
``predict`` wrote for the image (``<stem>_prediction.npz``, either form; not run again).
Options and checks; the work is :mod:`CalibSegLib.workflows.compare`.
"""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import refuse_overwrite

NAME = "compare"
HELP = "run two models on one image and compare their segmentation and calibration"
EXAMPLE = ("calibseg compare out/sample/mni-t1_image.nii.gz --model Resources/Models/dicece "
           "--model Resources/Models/dicece-softace --reference out/sample/mni-t1_labels.nii.gz "
           "-o out/compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg compare`` options to ``parser``."""
    parser.add_argument("image", help="image file or DICOM series folder")
    parser.add_argument("--model", action="append", required=True,
                        help="model folder, or a <stem>_prediction.npz file predict wrote for "
                             "the image (give two)")
    parser.add_argument("--reference", help="reference label map on the image grid")
    parser.add_argument("--bins", type=int, default=20, help="confidence bins")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available")
    parser.add_argument("-o", "--output", default="out/compare", help="output folder")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_overwrite_argument(parser)


def is_saved(spec: str) -> bool:
    """Whether a ``--model`` entry is a saved prediction file rather than a model folder."""
    return spec.lower().endswith(".npz") and os.path.isfile(spec)


def _names(card_names: list[str]) -> list[str]:
    return [n if n != card_names[1 - i] else f"{n}-{'AB'[i]}" for i, n in enumerate(card_names)]


def check(args: argparse.Namespace) -> None:
    """Options, files and outputs before any model is loaded.

    Sets ``args.model_labels`` (the two models' names in the outputs).
    """
    if len(args.model) != 2:
        raise CalibSegError("compare needs exactly two --model folders.")
    _checks.input_image(args.image)
    if args.reference:
        _checks.input_image(args.reference)
    if args.bins < 1:
        raise CalibSegError(f"--bins {args.bins}: give at least 1 bin.")
    folders = [m for m in args.model if not is_saved(m)]
    classes = [_checks.model_class_names(m) for m in folders]
    if len(classes) == 2 and classes[0] != classes[1]:
        raise CalibSegError("The two models have different classes; compare models of the "
                            "same task.")
    args.model_labels = _names([os.path.basename(m)[: -len(".npz")] if is_saved(m) else str(
        _checks.model_card(m).get("name", os.path.basename(os.path.normpath(m))))
        for m in args.model])
    planned = [os.path.join(args.output, f"{n}_{k}.nii.gz") for n in args.model_labels
               for k in ("labels", "confidence")]
    planned += [os.path.join(args.output, f) for f in ("compare.json", "reliability.png")]
    refuse_overwrite(planned, args.overwrite)
