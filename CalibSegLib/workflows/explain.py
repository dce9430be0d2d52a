"""``calibseg explain``: explanation maps of a model's segmentation, with faithfulness scores."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.api import explain, save_explanation
from CalibSegLib.explain.faithfulness import activation_precision
from CalibSegLib.explain.table import prototype_evidence
from CalibSegLib.files import image_stem
from CalibSegLib.io import read_image
from CalibSegLib.models import load_model
from CalibSegLib.workflows.console import progress_bar, warn_if_label_image

NAME = "explain"


def _read_on_grid(path: str, shape, affine, what: str):
    array, other = read_image(path)
    if array.shape != tuple(shape) or not np.allclose(other, affine, atol=1e-3):
        raise CalibSegError(
            f"{path}: the {what} is not on the image grid (shape {array.shape} vs "
            f"{tuple(shape)}); resample it onto the image first."
        )
    return array


def run(args: argparse.Namespace) -> int:
    """``calibseg explain`` after its checks: explain, score, write the maps and the record."""
    target = args.class_index
    quiet = getattr(args, "quiet", False)
    image, affine = read_image(args.image)
    warn_if_label_image(NAME, image, args.image)
    roi = _read_on_grid(args.roi, image.shape, affine, "ROI") if args.roi else None
    reference = (_read_on_grid(args.reference, image.shape, affine, "reference segmentation")
                 .astype("int64") if args.reference else None)
    if args.faithfulness and not quiet:
        print(f"calibseg explain: scoring faithfulness re-runs the model for {args.steps} "
              f"deletion and insertion steps, {args.blocks} random blocks and the random "
              "baselines: about a minute or more on a CPU", file=sys.stderr)

    model = load_model(args.model)
    with progress_bar(NAME, quiet) as progress:
        explanation = explain(
            image, affine, model, args.method, target, roi, layer=args.layer,
            faithfulness=args.faithfulness, reference=reference, device=args.device,
            faithfulness_options={"steps": args.steps, "baseline": args.baseline,
                                  "n_blocks": args.blocks, "seed": args.seed},
            progress=progress, top_prototypes=None,
        )
    if reference is not None and not args.faithfulness:
        explanation.details["plausibility"] = {
            "activation_precision": activation_precision(
                explanation.map, reference == explanation.target_class),
            "top_percent": 10.0}
    os.makedirs(args.output, exist_ok=True)
    written = save_explanation(explanation, args.output, stem=image_stem(args.image),
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
