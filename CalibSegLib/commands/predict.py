"""``calibseg predict``: segment an image and write probability, confidence and explanation maps.

A full-precision prediction writes the probability map (one component per class);
a compact one (``--form compact``, or ``auto`` beyond the full form's memory budget)
writes the prediction file ``<stem>_prediction.npz`` instead (top-k scores, at most
16 bytes per voxel, memory-mappable; read by ``evaluate --probs``), and the
probability map only with ``--probs``. Options and checks; the work is
:mod:`CalibSegLib.workflows.predict`.
"""

from __future__ import annotations

import argparse
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import image_stem, refuse_overwrite

NAME = "predict"
HELP = ("segment an image with a model; write labels, probabilities, confidence, entropy and "
        "prototype maps")
EXAMPLE = ("calibseg predict out/sample/mni-t1_image.nii.gz --model Resources/Models/dicece "
           "-o out/pred")

_FORMATS = (".nii.gz", ".nrrd", ".mha")
#: Every map ``predict`` may write (prototype maps only for prototype models).
MAP_KEYS = ("seg", "probs", "confidence", "entropy", "top_similarity", "nearest_prototype",
            "prototype_contribution")
#: The saved prediction (:func:`CalibSegLib.inference.save_prediction`) beside the maps.
PREDICTION_FILE = "prediction.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg predict`` options to ``parser``."""
    parser.add_argument("image", help="image file (NIfTI, NRRD, MetaImage) or DICOM series folder")
    parser.add_argument("--model", required=True, help="model folder (model.json + weights)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available")
    parser.add_argument("-o", "--output", default="out/predict", help="output folder")
    parser.add_argument("--format", default=".nii.gz", choices=_FORMATS, help="output format")
    parser.add_argument("--temperature", type=float, default=None,
                        help="softmax temperature, > 0 (default: the model card's)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default: the model card's, "
                             "0.25 unless the card says otherwise)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per network call")
    parser.add_argument("--no-maps", action="store_true", help="skip prototype maps")
    parser.add_argument("--form", default="auto", choices=["auto", "full", "compact"],
                        help="full: float32 probabilities of every class; compact: top-k scores "
                             "(at most 16 bytes per voxel) in <stem>_prediction.npz; auto "
                             "(default): full while logits and probabilities fit in 1 GiB")
    parser.add_argument("--probs", action="store_true",
                        help="also write the probability map of a compact prediction (one "
                             "float32 component per class)")
    parser.add_argument("--save-prediction", action="store_true",
                        help="also write <stem>_prediction.npz for a full-precision prediction "
                             "(a compact one always writes it)")
    parser.add_argument("--dicom-out", default=None, metavar="DIR",
                        help="DICOM series input only: also write a DICOM SEG of the labels and a "
                             "DICOM Parametric Map of the confidence, referencing the series")
    add_overwrite_argument(parser)


def planned_files(image: str, output: str, fmt: str, dicom_out: str | None) -> list[str]:
    """Every path ``predict`` could write for ``image`` (checked before any work)."""
    stem = image_stem(image)
    paths = [os.path.join(output, f"{stem}_{key}{fmt}") for key in MAP_KEYS]
    paths.append(os.path.join(output, f"{stem}_prediction.json"))
    paths.append(os.path.join(output, f"{stem}_{PREDICTION_FILE}"))
    if dicom_out:
        paths += [os.path.join(dicom_out, f"{stem}_seg.dcm"),
                  os.path.join(dicom_out, f"{stem}_confidence.dcm")]
    return paths


def check(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model is loaded (no torch import)."""
    _checks.input_image(args.image)
    if args.dicom_out and not os.path.isdir(args.image):
        raise CalibSegError(f"--dicom-out needs a DICOM series folder as input; {args.image} is a "
                            "file. Drop --dicom-out or pass the series folder.")
    if args.temperature is not None and not args.temperature > 0:
        raise CalibSegError(f"--temperature {args.temperature:g}: give a temperature > 0.")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise CalibSegError(f"--overlap {args.overlap:g}: give a fraction in [0, 1).")
    if args.sw_batch_size < 1:
        raise CalibSegError("--sw-batch-size must be at least 1.")
    _checks.model_card(args.model)
    refuse_overwrite(planned_files(args.image, args.output, args.format, args.dicom_out),
                     args.overwrite)
