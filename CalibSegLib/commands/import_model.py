"""``calibseg import-model``: wrap a MONAI bundle or TorchScript file into a model folder."""

from __future__ import annotations

import argparse
import json
import os

NAME = "import-model"
HELP = "import a MONAI bundle or TorchScript model into a CalibSeg model folder"
EXAMPLE = "calibseg import-model spleen_ct_segmentation -o models/spleen --kind bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg import-model`` options to ``parser``."""
    parser.add_argument("source", help="MONAI bundle folder or TorchScript file")
    parser.add_argument("-o", "--output", required=True, help="new model folder")
    parser.add_argument("--kind", choices=["bundle", "torchscript", "nnunet"], default=None,
                        help="default: a folder with configs/ is a bundle, one with plans.json an "
                             "nnU-Net v2 results folder, a file is TorchScript")
    parser.add_argument("--name", default=None, help="model name for the card")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names, background first")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="voxel size in mm the network expects")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="sliding-window size in voxels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--output-kind", choices=["logits", "probabilities", "log_probabilities"],
                        default=None,
                        help="what the network's output channels are (default: detected by "
                             "running the network on a sample input)")
    parser.add_argument("--axis-order", choices=["XYZ", "ZYX"], default="XYZ",
                        help="array axis order the network takes: XYZ (MONAI/nibabel, default) "
                             "or ZYX (CalibSeg)")
    parser.add_argument("--preprocessing", default=None, metavar="JSON",
                        help="file with the intensity transform list, e.g. "
                             '[{"transform": "NormalizeIntensity", "args": {"nonzero": true}}] '
                             "(default: read from the bundle; z-score for TorchScript)")
    nnunet = parser.add_argument_group("nnU-Net v2 (--kind nnunet)")
    nnunet.add_argument("--configuration", default="3d_fullres",
                        help="plans configuration the folds were trained with")
    nnunet.add_argument("--folds", nargs="+", default=None, metavar="FOLD",
                        help="folds to ensemble (default: every fold_N with the checkpoint)")
    nnunet.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name in each fold folder")
    nnunet.add_argument("--mirroring", action="store_true",
                        help="mirroring test-time augmentation at prediction (off by default)")


def _read_preprocessing(path: str) -> list:
    from CalibSegLib.errors import CalibSegError

    try:
        with open(path, encoding="utf-8") as fh:
            items = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CalibSegError(f"{path}: cannot read the preprocessing list ({exc}).") from exc
    if not isinstance(items, list):
        raise CalibSegError(f"{path}: expected a JSON list of {{transform, args}} objects.")
    return items


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.models import load_model
    from CalibSegLib.models.importers import detect_kind, import_model
    from CalibSegLib.models.preprocessing import describe

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    options = {"axis_order": args.axis_order, "output_kind": args.output_kind}
    if args.preprocessing:
        options["preprocessing"] = _read_preprocessing(args.preprocessing)
    if (args.kind or detect_kind(args.source)) == "nnunet":
        import_model(args.source, args.output, kind="nnunet", name=args.name,
                     configuration=args.configuration, folds=args.folds,
                     checkpoint=args.checkpoint, mirroring=args.mirroring,
                     overwrite=args.overwrite)
    else:
        import_model(args.source, args.output, kind=args.kind, name=args.name,
                     class_names=classes, spacing_mm=args.spacing,
                     patch_size=args.patch_size, overwrite=args.overwrite, **options)
    folder = os.path.abspath(args.output)
    model = load_model(folder)
    if not getattr(args, "quiet", False):
        card = model.card
        print(f"imported {card.name} ({card.architecture}) -> {folder}")
        print(f"classes: {', '.join(card.class_names)}; spacing {card.spacing_mm} mm; "
              f"patch {card.patch_size}; axis order {card.axis_order}; "
              f"output {card.output_kind}")
        if card.architecture == "nnunet":
            nn = card.nnunet
            print(f"nnU-Net {nn['configuration']}, folds {card.network['folds']}: its own "
                  f"preprocessing ({', '.join(nn['normalization_schemes'])}), sliding window "
                  f"and resampling; mirroring {'on' if nn['mirroring'] else 'off'}")
        else:
            print(f"preprocessing: {describe(card.preprocessing)}")
        print(f"review and edit {folder}/model.json before use (generated card).")
    return 0
