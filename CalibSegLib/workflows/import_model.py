"""``calibseg import-model``: import a foreign model into a CalibSeg model folder."""

from __future__ import annotations

import argparse
import os

from CalibSegLib.models import load_model
from CalibSegLib.models.importers import detect_kind, import_model
from CalibSegLib.models.preprocessing import describe


def run(args: argparse.Namespace) -> int:
    """``calibseg import-model`` after its checks: write the model folder and describe it."""
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    options = {"axis_order": args.axis_order, "output_kind": args.output_kind}
    if args.preprocessing_items is not None:
        options["preprocessing"] = args.preprocessing_items
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
