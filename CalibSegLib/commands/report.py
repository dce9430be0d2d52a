"""``calibseg report``: one self-contained HTML report for one or two models on an image."""

from __future__ import annotations

import argparse
import os
import sys

NAME = "report"
HELP = ("write a self-contained HTML report (model cards, metrics, reliability diagrams, "
        "overlays, explanation with faithfulness, prototype gallery) for an image")
EXAMPLE = ("calibseg report image.nii.gz --reference labels.nii.gz --model "
           "Resources/Models/dicece --model Resources/Models/dicece-hardace -o out/report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file or DICOM series folder")
    parser.add_argument("--reference", required=True, help="reference label map on its grid")
    parser.add_argument("--model", action="append", required=True,
                        help="model folder (one or two)")
    parser.add_argument("-o", "--output", default="out/report",
                        help="output folder (report.html, metrics.json, maps)")
    parser.add_argument("--no-faithfulness", action="store_true",
                        help="skip the faithfulness measurement of the explanation")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from CalibSegLib.data.sample import SampleCase
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import read_image
    from CalibSegLib.report.demo import run_report

    if not 1 <= len(args.model) <= 2:
        raise CalibSegError("report takes one or two --model folders.")
    image, affine = read_image(args.image)
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
    bar = tqdm(total=100, disable=getattr(args, "quiet", False), file=sys.stderr,
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
