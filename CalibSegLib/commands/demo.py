"""``calibseg demo``: the main job on the embedded sample case."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run CalibSeg end to end on the embedded sample case and write a report"
EXAMPLE = "calibseg demo -o out/demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="out/demo", help="output folder")
    parser.add_argument("--shift-seed", type=int, default=1001,
                        help="seed of the shifted (held-out) variant")


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.data import sample_case

    case = sample_case("mni-t1", resolution_mm=2.0)
    shifted = sample_case("mni-t1", resolution_mm=2.0, shift_seed=args.shift_seed)
    print(case.summary())
    print(shifted.summary())
    return 0
