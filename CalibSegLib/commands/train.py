"""``calibseg train``: train a (calibration-aware, optionally prototype) segmentation model
(options and checks)."""

from __future__ import annotations

import argparse
import os
import shlex

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument
from CalibSegLib.data.case import available_cases
from CalibSegLib.data.seeds import parse_seeds
from CalibSegLib.errors import CalibSegError
from CalibSegLib.training.config import TrainConfig

NAME = "train"
HELP = ("train a segmentation model folder from image/label pairs or the sample case, with "
        "Dice+CE and an optional mL1-ACE calibration loss")
EXAMPLE = ("calibseg train --sample mni-t1 --train-seeds 1-40 --val-seeds 41-44 "
           "--calibration-loss hard -o out/model-hardace")


#: Default of ``--steps`` (the whole run) and the default share of the prototype head's
#: warm-up and last-layer stages in it.
DEFAULT_TOTAL_STEPS = 380
STAGE_SHARE = 0.1


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas: {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg train`` options to ``parser``."""
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("data", nargs="?", default=None,
                      help="folder of <id>_image.nii.gz + <id>_labels.nii.gz pairs, or a CSV "
                      "with columns image,labels[,id]")
    data.add_argument("--val", default=None,
                      help="validation folder or CSV (default: the last --val-count cases of DATA)")
    data.add_argument("--val-count", type=int, default=1,
                      help="cases of DATA held out for validation when --val is not given")
    data.add_argument("--sample", default=None, metavar="NAME",
                      help="train on shifted variants of an embedded sample case (mni-t1 or "
                           "ct-chest)")
    data.add_argument("--resolution", type=float, default=2.0,
                      help="mni-t1 sample resolution in mm (ct-chest keeps its native grid)")
    data.add_argument("--train-seeds", default="1-40", help="shift seeds of the training cases")
    data.add_argument("--val-seeds", default="41-44", help="shift seeds of the validation cases")
    data.add_argument("--crop", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1",
                      help="train on a crop of every sample case (quick trials)")
    data.add_argument("--classes", default=None,
                      help="comma-separated class names, background first "
                      "(default: the sample case's, or class0..classN from the labels)")

    net = parser.add_argument_group("network")
    net.add_argument("--head", choices=["prototype", "linear"], default=d.head,
                     help="segmentation head")
    net.add_argument("--channels", type=_ints, default=d.channels,
                     help="UNet channels, e.g. 8,16,32")
    net.add_argument("--strides", type=_ints, default=d.strides, help="UNet strides, e.g. 2,2")
    net.add_argument("--res-units", type=int, default=d.num_res_units,
                     help="UNet residual units per stage")
    net.add_argument("--feature-dim", type=int, default=d.feature_dim,
                     help="prototype head: feature / prototype length")
    net.add_argument("--prototypes-per-class", type=int, default=d.prototypes_per_class,
                     help="prototype head: prototypes of each class")

    budget = parser.add_argument_group("budget and optimisation")
    budget.add_argument("--patch", type=_ints, default=d.patch_size,
                        help="patch size Z,Y,X (one number for a cube)")
    budget.add_argument("--batch", type=int, default=d.batch_size, help="patches per step")
    budget.add_argument("--steps", type=int, default=DEFAULT_TOTAL_STEPS,
                        help="total optimisation steps of the run, every stage included")
    budget.add_argument("--warmup-steps", type=int, default=None,
                        help="prototype head: warm-up steps (backbone frozen), part of --steps "
                             f"(default: {round(100 * STAGE_SHARE)}%% of --steps)")
    budget.add_argument("--last-layer-steps", type=int, default=None,
                        help="prototype head: last-layer steps after the push, part of --steps "
                             f"(default: {round(100 * STAGE_SHARE)}%% of --steps)")
    budget.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    budget.add_argument("--last-layer-lr", type=float, default=d.last_layer_learning_rate,
                        help="prototype head: learning rate of the last-layer stage")
    budget.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice")
    budget.add_argument("--threads", type=int, default=2, help="CPU threads for torch")

    loss = parser.add_argument_group("losses")
    loss.add_argument("--calibration-loss", choices=["none", "hard", "soft"],
                      default=d.calibration_loss, help="mL1-ACE auxiliary loss binning")
    loss.add_argument("--calibration-weight", type=float, default=d.calibration_weight,
                      help="weight λ of the mL1-ACE loss")
    loss.add_argument("--bins", type=int, default=d.bins, help="mL1-ACE bins")
    loss.add_argument("--cluster-weight", type=float, default=d.cluster_weight,
                      help="prototype head: cluster cost weight")

    run_ = parser.add_argument_group("run")
    run_.add_argument("-o", "--output", required=True, help="model folder to write")
    run_.add_argument("--name", default=None, help="model name in the card (default: folder)")
    run_.add_argument("--resume", action="store_true", help="continue an interrupted run")
    add_overwrite_argument(run_)
    run_.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                      help="steps between checkpoints")
    run_.add_argument("--push-cases", type=int, default=d.push_cases,
                      help="training cases searched by the prototype push (0 = all)")
    run_.add_argument("--keep-checkpoint", action="store_true",
                      help="keep the last checkpoint in the model folder")


#: (option, attribute) pairs written into the recorded command line.
_RECORDED = [
    ("--sample", "sample"), ("--resolution", "resolution"), ("--train-seeds", "train_seeds"),
    ("--val-seeds", "val_seeds"), ("--crop", "crop"), ("--val", "val"),
    ("--val-count", "val_count"), ("--classes", "classes"), ("--head", "head"),
    ("--channels", "channels"), ("--strides", "strides"), ("--res-units", "res_units"),
    ("--feature-dim", "feature_dim"), ("--prototypes-per-class", "prototypes_per_class"),
    ("--patch", "patch"), ("--batch", "batch"), ("--steps", "steps"),
    ("--warmup-steps", "warmup_steps"), ("--last-layer-steps", "last_layer_steps"),
    ("--lr", "lr"), ("--last-layer-lr", "last_layer_lr"), ("--seed", "seed"),
    ("--calibration-loss", "calibration_loss"), ("--calibration-weight", "calibration_weight"),
    ("--bins", "bins"), ("--cluster-weight", "cluster_weight"),
    ("--push-cases", "push_cases"), ("--name", "name"), ("-o", "output"),
]


def command_line(args: argparse.Namespace) -> str:
    """The full ``calibseg train`` command reproducing ``args`` (defaults spelled out)."""
    sample = getattr(args, "sample", None)
    words = ["calibseg", "train"] + ([args.data] if args.data else [])
    for flag, attr in _RECORDED:
        value = getattr(args, attr, None)
        if value is None or (sample is None and attr in ("resolution", "train_seeds",
                                                          "val_seeds", "crop")):
            continue
        if sample is not None and attr in ("val", "val_count"):
            continue
        if sample == "ct-chest" and attr == "resolution":  # native grid only
            continue
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        words += [flag, str(value)]
    return shlex.join(words)


def parse_crop(text: str | None) -> tuple[slice, slice, slice] | None:
    """``--crop Z0:Z1,Y0:Y1,X0:X1`` as three slices, or ``None``."""
    if not text:
        return None
    try:
        parts = [p.split(":") for p in text.split(",")]
        crop = tuple(slice(int(a), int(b)) for a, b in parts)
    except ValueError as exc:
        raise CalibSegError(f"--crop {text!r}: write Z0:Z1,Y0:Y1,X0:X1, e.g. 30:62,40:72,30:62") \
            from exc
    if len(crop) != 3:
        raise CalibSegError("--crop needs three ranges Z0:Z1,Y0:Y1,X0:X1.")
    z, y, x = crop
    return z, y, x


def stage_steps(args: argparse.Namespace) -> tuple[int, int, int]:
    """``(warm-up, joint, last-layer)`` steps: ``--steps`` is the total of all three.

    Fills ``args.warmup_steps`` / ``args.last_layer_steps`` when not given (so the
    recorded command line spells them out).
    """
    total = int(args.steps)
    if total < 1:
        raise CalibSegError(f"--steps {total}: give at least 1 step.")
    if args.head == "linear":
        for option, value in (("--warmup-steps", args.warmup_steps),
                              ("--last-layer-steps", args.last_layer_steps)):
            if value:
                raise CalibSegError(f"{option} applies to the prototype head only.")
        args.warmup_steps, args.last_layer_steps = 0, 0
        return 0, total, 0
    if args.warmup_steps is None:
        args.warmup_steps = int(STAGE_SHARE * total)
    if args.last_layer_steps is None:
        args.last_layer_steps = int(STAGE_SHARE * total)
    warmup, last = int(args.warmup_steps), int(args.last_layer_steps)
    if warmup < 0 or last < 0:
        raise CalibSegError("--warmup-steps and --last-layer-steps must not be negative.")
    joint = total - warmup - last
    if joint < 1:
        raise CalibSegError(f"--steps {total} leaves no joint-training step after {warmup} "
                            f"warm-up and {last} last-layer steps; raise --steps or lower those.")
    return warmup, joint, last


def config_from_args(args: argparse.Namespace, class_names: list[str]):
    """The :class:`~CalibSegLib.training.TrainConfig` described by ``args``."""
    warmup, joint, last = stage_steps(args)
    patch = tuple(args.patch) * 3 if len(args.patch) == 1 else tuple(args.patch)
    return TrainConfig(
        class_names=list(class_names), head=args.head, channels=tuple(args.channels),
        strides=tuple(args.strides), num_res_units=args.res_units, feature_dim=args.feature_dim,
        prototypes_per_class=args.prototypes_per_class, patch_size=patch,
        batch_size=args.batch, steps=joint, warmup_steps=warmup,
        last_layer_steps=last, learning_rate=args.lr,
        last_layer_learning_rate=args.last_layer_lr, calibration_loss=args.calibration_loss,
        calibration_weight=args.calibration_weight, bins=args.bins,
        cluster_weight=args.cluster_weight, seed=args.seed,
        checkpoint_every=args.checkpoint_every, push_cases=args.push_cases,
    ).validate()


def check(args: argparse.Namespace) -> None:
    """Options, data paths and output before any case is generated or torch imported."""
    if args.sample and args.data:
        raise CalibSegError("Give either DATA (folder/CSV) or --sample, not both.")
    if not args.sample and not args.data:
        raise CalibSegError(
            "No training data: give a folder/CSV of image/label pairs or --sample mni-t1.")
    if args.data:
        _checks.input_file(args.data, "DATA")
    if args.val:
        _checks.input_file(args.val, "--val")
    if args.sample:
        if args.sample not in available_cases():
            raise CalibSegError(f"Unknown sample case {args.sample!r}; choose one of "
                                f"{', '.join(available_cases())}.")
        parse_seeds(args.train_seeds)
        parse_seeds(args.val_seeds)
        parse_crop(args.crop)
    stage_steps(args)
    names = ([n.strip() for n in args.classes.split(",")] if args.classes else ["a", "b"])
    config_from_args(args, names)  # validates sizes, losses, patch divisibility
    used = [f for f in ("model.json", "checkpoint") if os.path.exists(os.path.join(args.output, f))]
    if used and not args.resume and not args.overwrite:
        raise CalibSegError(f"{args.output} already holds a trained model or checkpoint; pass "
                            "--resume to continue it, --overwrite to start again, or choose "
                            "another output folder.")
