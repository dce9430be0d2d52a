"""``calibseg sample-data``: write an embedded sample case to image files (options and checks)."""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.data.case import available_cases
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import refuse_overwrite

NAME = "sample-data"
HELP = "write an embedded sample case (image, labels, soft reference) to files"
EXAMPLE = "calibseg sample-data mni-t1 --resolution 2 --shift-seed 7 -o out/sample"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg sample-data`` options to ``parser``."""
    parser.add_argument("case", nargs="?", default="mni-t1",
                        help="sample case: mni-t1 or ct-chest (default: mni-t1)")
    parser.add_argument("--resolution", type=float, default=None,
                        help="voxel size in mm, mni-t1 only: 1, 2, 3 … (default: 2; ct-chest "
                             "comes on its native 3.05 x 3.05 x 10 mm grid)")
    parser.add_argument("--shift-seed", type=int, default=None,
                        help="write the shifted variant with this seed (default: the case "
                             "itself)")
    parser.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nrrd", ".mha"],
                        help="image format")
    parser.add_argument("--dicom", action="store_true",
                        help="also write the image as a DICOM series folder <name>_dicom/")
    parser.add_argument("-o", "--output", default="out/sample", help="output folder")
    add_overwrite_argument(parser)


def check(args: argparse.Namespace) -> None:
    """Options and outputs before any data is generated; sets ``args.resolution`` to use."""
    if args.case not in available_cases():
        raise CalibSegError(f"Unknown sample case {args.case!r}; choose one of "
                            f"{', '.join(available_cases())}.")
    resolution = args.resolution
    if args.case == "ct-chest":
        if resolution is not None:
            raise CalibSegError("--resolution applies to mni-t1 only; ct-chest comes on its "
                                "native 3.05 x 3.05 x 10 mm grid. Drop --resolution.")
        resolution = 2.0  # unused for ct-chest
    elif resolution is None:
        resolution = 2.0
    elif resolution < 1 or resolution != int(resolution):
        raise CalibSegError(f"--resolution {resolution:g}: give a whole number of mm (1, 2, "
                            "3 …); the 1 mm template is averaged in blocks.")
    name = args.case if args.shift_seed is None else f"{args.case}-shift{args.shift_seed}"
    stem = os.path.join(args.output, name)
    planned = [stem + s + args.format for s in ("_image", "_labels", "_probs")] + [stem + ".json"]
    if args.dicom:
        planned.append(stem + "_dicom")
    refuse_overwrite(planned, args.overwrite)
    args.resolution = float(resolution)
