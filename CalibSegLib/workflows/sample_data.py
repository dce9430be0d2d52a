"""``calibseg sample-data``: write an embedded sample case (image, labels, soft reference)."""

from __future__ import annotations

import argparse
import json
import os
import shutil

from CalibSegLib.data import sample_case
from CalibSegLib.dicom import write_series
from CalibSegLib.io import atomic_path, write_image


def run(args: argparse.Namespace) -> int:
    """``calibseg sample-data`` after its checks: write the case's files."""
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
        modality = "CT" if args.case == "ct-chest" else "MR"
        folder = stem + "_dicom"
        if os.path.isdir(folder):  # only with --overwrite: a stale slice must not stay
            shutil.rmtree(folder)
        write_series(case.image, case.affine, folder, modality=modality,
                     series_description=f"CalibSeg sample {case.name}",
                     body_part="CHEST" if args.case == "ct-chest" else "HEAD")
        written.append(folder)
    meta = {
        "name": case.name, "class_names": list(case.class_names),
        "class_colors": [list(c) for c in case.class_colors], "attribution": case.attribution,
        "files": [os.path.basename(p) for p in written],
    }
    with atomic_path(stem + ".json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
    if not getattr(args, "quiet", False):
        print(case.summary())
        for path in written:
            print(f"wrote {path}")
    return 0
