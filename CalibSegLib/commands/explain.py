"""``calibseg explain``: explanation maps of a model's segmentation, with faithfulness scores."""

from __future__ import annotations

import argparse
import os
import sys

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

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


def _stem(path: str) -> str:
    from CalibSegLib.io import image_suffix

    name = os.path.basename(os.path.normpath(path))
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def check(args: argparse.Namespace) -> int | None:
    """Options, files, class and outputs before any model is loaded; the class index."""
    import glob

    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import refuse_overwrite

    _checks.input_image(args.image)
    for path in (args.roi, args.reference):
        if path:
            _checks.input_image(path)
    for option, value in (("--steps", args.steps), ("--blocks", args.blocks)):
        if value < 1:
            raise CalibSegError(f"{option} {value}: give at least 1.")
    names = _checks.model_class_names(args.model)
    target = _checks.class_index(args.target_class, names, args.model)
    base = os.path.join(args.output, f"{_stem(args.image)}_{args.method}")
    refuse_overwrite([base + args.format, base + ".json"]
                     + sorted(glob.glob(glob.escape(base) + "_*" + args.format)), args.overwrite)
    return target


def _progress_printer(quiet: bool):
    if quiet:
        return None

    def show(fraction: float, message: str) -> None:
        bar = "#" * int(30 * fraction)
        sys.stderr.write(f"\r[{bar:<30}] {100 * fraction:5.1f}% {message[:40]:<40}")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _read_on_grid(path: str, shape, affine, what: str):
    import numpy as np

    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import read_image

    array, other = read_image(path)
    if array.shape != tuple(shape) or not np.allclose(other, affine, atol=1e-3):
        raise CalibSegError(
            f"{path}: the {what} is not on the image grid (shape {array.shape} vs "
            f"{tuple(shape)}); resample it onto the image first."
        )
    return array


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.io import read_image

    target = check(args)
    quiet = getattr(args, "quiet", False)
    image, affine = read_image(args.image)
    _checks.warn_if_label_image(NAME, image, args.image)
    roi = _read_on_grid(args.roi, image.shape, affine, "ROI") if args.roi else None
    reference = (_read_on_grid(args.reference, image.shape, affine, "reference segmentation")
                 .astype("int64") if args.reference else None)
    if args.faithfulness and not quiet:
        print(f"calibseg explain: scoring faithfulness re-runs the model for {args.steps} "
              f"deletion and insertion steps, {args.blocks} random blocks and the random "
              "baselines: about a minute or more on a CPU", file=sys.stderr)

    from CalibSegLib.explain.api import explain, save_explanation
    from CalibSegLib.explain.table import prototype_evidence
    from CalibSegLib.models import load_model

    model = load_model(args.model)
    explanation = explain(
        image, affine, model, args.method, target, roi, layer=args.layer,
        faithfulness=args.faithfulness, reference=reference, device=args.device,
        faithfulness_options={"steps": args.steps, "baseline": args.baseline,
                              "n_blocks": args.blocks, "seed": args.seed},
        progress=_progress_printer(quiet), top_prototypes=None,
    )
    if reference is not None and not args.faithfulness:
        from CalibSegLib.explain.faithfulness import activation_precision

        explanation.details["plausibility"] = {
            "activation_precision": activation_precision(
                explanation.map, reference == explanation.target_class),
            "top_percent": 10.0}
    os.makedirs(args.output, exist_ok=True)
    written = save_explanation(explanation, args.output, stem=_stem(args.image),
                               suffix=args.format)
    note = explanation.details.get("note")
    if note:
        print(f"calibseg explain: warning: {note}", file=sys.stderr)
    if not quiet:
        print(f"{explanation.method} explanation of {explanation.region}")
        f = explanation.faithfulness
        if f:
            m = f["explanation"]
            print(f"  deletion AUC {m['deletion_auc']:.3f}, insertion AUC "
                  f"{m['insertion_auc']:.3f}, correlation {m['correlation']:.3f}; "
                  f"beats random: {'yes' if f.get('beats_random') else 'NO'}")
        for row in prototype_evidence(explanation.prototypes or [], top=3):
            src = row["source"]
            print(f"  evidence {row['side']:<7} #{row['rank']}: prototype {row['index']} "
                  f"({row['class_name']}) {row['evidence']:+.3f} of the region's prototype "
                  f"evidence, from {src.get('case', '?')} at {src.get('voxel')}")
        for path in written:
            print(f"wrote {path}")
    return 0
