"""``calibseg import-model``: wrap a MONAI bundle, TorchScript file or nnU-Net folder into a
model folder (options and checks)."""

from __future__ import annotations

import argparse

from CalibSegLib.files import read_json

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
    return read_json(path, list, "preprocessing list of {transform, args} objects")


def check(args: argparse.Namespace) -> None:
    """The preprocessing file before anything is imported; sets ``args.preprocessing_items``."""
    args.preprocessing_items = _read_preprocessing(args.preprocessing) \
        if args.preprocessing else None
