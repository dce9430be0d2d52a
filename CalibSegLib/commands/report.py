"""``calibseg report``: one self-contained HTML report for one or two models on an image."""

from __future__ import annotations

import argparse
import os
import sys

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

NAME = "report"
HELP = ("write a self-contained HTML report (model cards, metrics, reliability diagrams, "
        "overlays, explanation with faithfulness, prototype gallery) for an image")
EXAMPLE = ("calibseg report out/sample/mni-t1_image.nii.gz --reference "
           "out/sample/mni-t1_labels.nii.gz --model Resources/Models/dicece --model "
           "Resources/Models/dicece-hardace -o out/report")
#: The report's own files; the maps beside them are named after image and models.
REPORT_FILES = ("report.html", "metrics.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import refuse_overwrite

    if not 1 <= len(args.model) <= 2:
        raise CalibSegError("report takes one or two --model folders.")
    _checks.input_image(args.image)
    _checks.input_image(args.reference)
    classes = [_checks.model_class_names(m) for m in args.model]
    if len(set(classes)) > 1:
        raise CalibSegError("The models have different classes; compare models of the same "
                            "task.")
    refuse_overwrite([os.path.join(args.output, f) for f in REPORT_FILES], args.overwrite)


def run(args: argparse.Namespace) -> int:
    check(args)
    import numpy as np
    from tqdm import tqdm

    from CalibSegLib.data.sample import SampleCase
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import read_image
    from CalibSegLib.report.demo import run_report

    image, affine = read_image(args.image)
    _checks.warn_if_label_image(NAME, image, args.image)
    labels, ref_affine = read_image(args.reference)
    if labels.shape != image.shape or not np.allclose(ref_affine, affine, atol=1e-3):
        raise CalibSegError(f"{args.reference}: geometry differs from {args.image}; resample "
                            "the reference onto the image grid.")
    if labels.min() < 0 or not np.array_equal(labels, np.round(labels)):
        raise CalibSegError(f"{args.reference}: labels must be whole numbers 0, 1, 2 ...")
    name = os.path.basename(os.path.normpath(args.image)).split(".")[0]
    case = SampleCase(name=name, image=image.astype(np.float32), affine=affine,
                      labels=labels.astype(np.uint8), class_names=(), class_colors=(),
                      reference_probs=None)
    quiet = getattr(args, "quiet", False)
    if not args.no_faithfulness and not quiet:
        print("calibseg report: the faithfulness scores of the explanation take about a minute "
              "on a CPU (--no-faithfulness skips them)", file=sys.stderr)
    bar = tqdm(total=100, disable=quiet, file=sys.stderr,
               bar_format="{percentage:3.0f}%|{bar:30}| {desc}")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(100 * fraction)
        bar.set_description_str(message[:70])

    try:
        summary = run_report(args.model, [case], args.output, focus_index=0,
                             faithfulness=not args.no_faithfulness, progress=progress,
                             subtitle=f"{len(args.model)} model(s) on {name}")
    finally:
        bar.close()
    print(f"report: {summary['report']}")
    return 0
