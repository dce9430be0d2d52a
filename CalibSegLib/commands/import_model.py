"""``calibseg import-model``: wrap a MONAI bundle or TorchScript file into a model folder."""

from __future__ import annotations

import argparse

NAME = "import-model"
HELP = "import a MONAI bundle or TorchScript model into a CalibSeg model folder"
EXAMPLE = "calibseg import-model spleen_ct_segmentation -o models/spleen --kind bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="MONAI bundle folder or TorchScript file")
    parser.add_argument("-o", "--output", required=True, help="new model folder")
    parser.add_argument("--kind", choices=["bundle", "torchscript"], default=None,
                        help="default: a folder is a bundle, a file is TorchScript")
    parser.add_argument("--name", default=None, help="model name for the card")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names, background first")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="voxel size in mm the network expects")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="sliding-window size in voxels")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.models import load_model
    from CalibSegLib.models.importers import import_model

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    folder = import_model(args.source, args.output, kind=args.kind, name=args.name,
                          class_names=classes, spacing_mm=args.spacing,
                          patch_size=args.patch_size, overwrite=args.overwrite)
    model = load_model(folder)
    if not getattr(args, "quiet", False):
        card = model.card
        print(f"imported {card.name} ({card.architecture}) -> {folder}")
        print(f"classes: {', '.join(card.class_names)}; spacing {card.spacing_mm} mm; "
              f"patch {card.patch_size}; normalization {card.normalization}")
        print(f"review and edit {folder}/model.json before use (generated card).")
    return 0
