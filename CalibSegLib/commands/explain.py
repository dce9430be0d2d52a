"""``calibseg explain``: explanation maps of a model's segmentation, with faithfulness scores
(options and checks)."""

from __future__ import annotations

import argparse
import glob
import os

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import image_stem, refuse_overwrite

NAME = "explain"
HELP = ("explain a model's segmentation of an image (prototypes, Grad-CAM, Grad-CAM++ or "
        "occlusion) and, on request, score how faithful the explanation is")
EXAMPLE = ("calibseg explain out/sample/mni-t1_image.nii.gz --model "
           "Resources/Models/dicece-softace --method prototype --class 'grey matter' "
           "--faithfulness --reference out/sample/mni-t1_labels.nii.gz -o out/explain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg explain`` options to ``parser``."""
    parser.add_argument("image", help="image file (NIfTI, NRRD, MetaImage) or DICOM folder")
    parser.add_argument("--model", required=True, help="model folder (model.json + weights)")
    parser.add_argument("--method", default="prototype",
                        choices=["prototype", "gradcam", "gradcampp", "occlusion"],
                        help="explanation method (default: prototype)")
    parser.add_argument("--class", dest="target_class", default=None,
                        help="class name or index (default: largest predicted foreground class)")
    parser.add_argument("--roi", default=None,
                        help="mask image of the region to explain (default: predicted segment)")
    parser.add_argument("--layer", default=None,
                        help="Grad-CAM layer (default: the first decoder stage)")
    parser.add_argument("--faithfulness", action="store_true",
                        help="score deletion/insertion, faithfulness correlation vs random maps")
    parser.add_argument("--reference", default=None,
                        help="reference label image: adds activation precision (plausibility)")
    parser.add_argument("--steps", type=int, default=20,
                        help="deletion/insertion steps of the faithfulness scores")
    parser.add_argument("--baseline", default="blur", choices=["blur", "mean"],
                        help="what removed voxels become (default: blur)")
    parser.add_argument("--blocks", type=int, default=32,
                        help="random blocks of the faithfulness correlation")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nrrd", ".mha"],
                        help="output image format")
    parser.add_argument("-o", "--output", default="out/explain", help="output folder")
    add_overwrite_argument(parser)


def check(args: argparse.Namespace) -> None:
    """Options, files, class and outputs before any model is loaded.

    Sets ``args.class_index`` (the ``--class`` as an index, or ``None``).
    """
    _checks.input_image(args.image)
    for path in (args.roi, args.reference):
        if path:
            _checks.input_image(path)
    for option, value in (("--steps", args.steps), ("--blocks", args.blocks)):
        if value < 1:
            raise CalibSegError(f"{option} {value}: give at least 1.")
    names = _checks.model_class_names(args.model)
    target = _checks.class_index(args.target_class, names, args.model)
    base = os.path.join(args.output, f"{image_stem(args.image)}_{args.method}")
    refuse_overwrite([base + args.format, base + ".json"]
                     + sorted(glob.glob(glob.escape(base) + "_*" + args.format)), args.overwrite)
    args.class_index = target
