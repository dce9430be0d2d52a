"""``calibseg report``: one self-contained HTML report for one or two models on an image
(options and checks; the work is :func:`CalibSegLib.workflows.report.run`)."""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import refuse_overwrite

NAME = "report"
HELP = ("write a self-contained HTML report (model cards, metrics, reliability diagrams, "
        "overlays, explanation with faithfulness, prototype gallery) for an image")
EXAMPLE = ("calibseg report out/sample/mni-t1_image.nii.gz --reference "
           "out/sample/mni-t1_labels.nii.gz --model Resources/Models/dicece --model "
           "Resources/Models/dicece-hardace -o out/report")
#: The report's own files; the maps beside them are named after image and models.
REPORT_FILES = ("report.html", "metrics.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg report`` options to ``parser``."""
    parser.add_argument("image", help="image file or DICOM series folder")
    parser.add_argument("--reference", required=True, help="reference label map on its grid")
    parser.add_argument("--model", action="append", required=True,
                        help="model folder (one or two)")
    parser.add_argument("-o", "--output", default="out/report",
                        help="output folder (report.html, metrics.json, maps)")
    parser.add_argument("--no-faithfulness", action="store_true",
                        help="skip the faithfulness measurement of the explanation (its "
                             "longest step)")
    add_overwrite_argument(parser)


def check(args: argparse.Namespace) -> None:
    """Options, files, models and outputs before any model is loaded (no torch import)."""
    if not 1 <= len(args.model) <= 2:
        raise CalibSegError("report takes one or two --model folders.")
    _checks.input_image(args.image)
    _checks.input_image(args.reference)
    classes = [_checks.model_class_names(m) for m in args.model]
    if len(set(classes)) > 1:
        raise CalibSegError("The models have different classes; compare models of the same "
                            "task.")
    refuse_overwrite([os.path.join(args.output, f) for f in REPORT_FILES], args.overwrite)
