"""``calibseg sample-data``: write an embedded sample case to image files."""

from __future__ import annotations

import argparse
import json
import os

NAME = "sample-data"
HELP = "write an embedded sample case (image, labels, soft reference) to files"
EXAMPLE = "calibseg sample-data mni-t1 --resolution 2 --shift-seed 7 -o out/sample"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", nargs="?", default="mni-t1", help="mni-t1 (default) or ct-chest")
    parser.add_argument("--resolution", type=float, default=2.0, help="mm, mni-t1 only (1, 2, …)")
    parser.add_argument("--shift-seed", type=int, default=None, help="write a shifted variant")
    parser.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nrrd", ".mha"])
    parser.add_argument("--dicom", action="store_true",
                        help="also write the image as a DICOM series folder <name>_dicom/")
    parser.add_argument("-o", "--output", default="out/sample", help="output folder")


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.data import sample_case
    from CalibSegLib.io import write_image

    case = sample_case(args.case, resolution_mm=args.resolution, shift_seed=args.shift_seed)
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.join(args.output, case.name)
    written = [
        write_image(stem + "_image" + args.format, case.image, case.affine),
        write_image(stem + "_labels" + args.format, case.labels, case.affine),
    ]
    if case.reference_probs is not None:
        written.append(
            write_image(stem + "_probs" + args.format, case.reference_probs.transpose(1, 2, 3, 0),
                        case.affine, vector=True)
        )
    if args.dicom:
        from CalibSegLib.dicom import write_series

        modality = "CT" if args.case == "ct-chest" else "MR"
        folder = stem + "_dicom"
        write_series(case.image, case.affine, folder, modality=modality,
                     series_description=f"CalibSeg sample {case.name}")
        written.append(folder)
    meta = {
        "name": case.name, "class_names": list(case.class_names),
        "class_colors": [list(c) for c in case.class_colors], "attribution": case.attribution,
        "files": [os.path.basename(p) for p in written],
    }
    with open(stem + ".json", "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
    if not getattr(args, "quiet", False):
        print(case.summary())
        for path in written:
            print(f"wrote {path}")
    return 0
