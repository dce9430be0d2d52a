"""``calibseg train``: train a (calibration-aware, optionally prototype) segmentation model."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from CalibSegLib.commands.train import command_line, config_from_args, parse_crop
from CalibSegLib.data import sample_case
from CalibSegLib.errors import CalibSegError
from CalibSegLib.training import data as td
from CalibSegLib.training.loop import train


def load_data(args: argparse.Namespace, progress=None):
    """``(train cases, validation cases, class names, colours, data description)``."""
    if args.sample and args.data:
        raise CalibSegError("Give either DATA (folder/CSV) or --sample, not both.")
    if args.sample:
        train_seeds = td.parse_seeds(args.train_seeds)
        val_seeds = td.parse_seeds(args.val_seeds)
        overlap = set(train_seeds) & set(val_seeds)
        if overlap:
            raise CalibSegError(
                f"Training and validation seeds overlap ({td.format_seeds(sorted(overlap))}); "
                "make them disjoint."
            )
        crop = parse_crop(args.crop)
        cases = td.sample_cases(args.sample, train_seeds + val_seeds, args.resolution, crop,
                                progress=progress)
        train, val = cases[: len(train_seeds)], cases[len(train_seeds):]
        reference = sample_case(args.sample, resolution_mm=args.resolution)
        names, colors = list(reference.class_names), [list(c) for c in reference.class_colors]
        spacing = [round(float(v), 4) for v in
                   np.linalg.norm(np.asarray(reference.affine)[:3, :3], axis=0)]
        description = {
            "kind": "sample", "sample": args.sample,
            "resolution_mm": args.resolution if args.sample == "mni-t1" else None,
            "spacing_mm": spacing,
            "train_seeds": td.format_seeds(train_seeds), "val_seeds": td.format_seeds(val_seeds),
            "crop_zyx": args.crop, "train_cases": len(train), "val_cases": len(val),
            "note": "shifted variants (MONAI affine, bias field, gamma, low resolution, noise) "
                    f"of the embedded case; regenerate one with calibseg sample-data "
                    f"{args.sample} --shift-seed N",
        }
    elif args.data:
        def read(path):
            return td.csv_cases(path) if path.lower().endswith(".csv") else td.folder_cases(path)

        cases = read(args.data)
        if args.val:
            train, val = cases, read(args.val)
        else:
            if len(cases) <= args.val_count:
                raise CalibSegError(
                    f"{args.data} holds {len(cases)} case(s); at least {args.val_count + 1} are "
                    "needed to hold some out for validation (or pass --val)."
                )
            train, val = cases[: -args.val_count], cases[-args.val_count:]
        top = max(int(c.labels.max()) for c in cases)
        names = [f"class{i}" for i in range(top + 1)]
        names[0] = "background"
        colors = None
        description = {
            "kind": "files", "data": os.path.abspath(args.data),
            "val": os.path.abspath(args.val) if args.val else None,
            "train_cases": [c.case_id for c in train], "val_cases": [c.case_id for c in val],
        }
    else:
        raise CalibSegError(
            "No training data: give a folder/CSV of image/label pairs or --sample mni-t1."
        )
    if args.classes:
        names = [n.strip() for n in args.classes.split(",")]
        colors = colors if colors is not None and len(colors) == len(names) else None
    return train, val, names, colors, description


def run(args: argparse.Namespace) -> int:
    """``calibseg train`` after its checks: read or generate the cases, train, save."""
    started = time.perf_counter()
    quiet = getattr(args, "quiet", False)
    torch.set_num_threads(max(1, args.threads))

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    say("generating / reading training cases ...")
    train_cases, val_cases, names, colors, description = load_data(args)
    config = config_from_args(args, names)
    command = command_line(args)
    stages = ", ".join(f"{n} {name}" for name, n in config.stages() if n)
    say(f"{len(train_cases)} training and {len(val_cases)} validation cases; "
        f"{config.total_steps} steps ({stages}) of {config.batch_size} x "
        f"{config.patch_size} patches")
    try:
        result = train(
            config, train_cases, val_cases, args.output, resume=args.resume,
            overwrite=args.overwrite, command=command, data_description=description,
            keep_checkpoint=args.keep_checkpoint, show_progress=not quiet, class_colors=colors,
            name=args.name or os.path.basename(os.path.normpath(args.output)),
        )
    except KeyboardInterrupt:
        print(f"calibseg train: interrupted; the last checkpoint in {args.output}/checkpoint is "
              "intact, continue with the same command plus --resume", file=sys.stderr)
        raise
    assert result is not None  # without stop_after training runs to the end
    s = result.summary
    wall = time.perf_counter() - started
    say(f"done in {wall:.0f} s: {s['steps']} steps ({s['seconds']:.0f} s of optimisation at "
        f"{s['iterations_per_second']:.2f} it/s, {s['voxels_per_second']:.3g} voxels/s; the "
        f"rest is data, validation and the prototype push); temperature "
        f"{result.temperature:.3f}")
    print(args.output)
    return 0
