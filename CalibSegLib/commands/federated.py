"""``calibseg federated evaluate|calibrate|finetune``: N simulated sites on this machine."""

from __future__ import annotations

import argparse
import json

NAME = "federated"
HELP = ("validate, recalibrate or fine-tune across sites without sharing images "
        "(Flower; simulated sites here, see docs/federated.md for real sites)")
EXAMPLE = "calibseg federated evaluate --model MODEL --sites 3 --output fed-report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["evaluate", "calibrate", "finetune"])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--sites", type=int, default=3,
                        help="number of simulated sites holding shifted sample variants")
    parser.add_argument("--site", action="append", default=[], metavar="NAME=FOLDER",
                        help="a site with a folder of <id>_image/<id>_labels pairs "
                        "(repeat; replaces --sites)")
    parser.add_argument("--cases-per-site", type=int, default=1)
    parser.add_argument("--resolution", type=float, default=4.0,
                        help="sample grid in mm for simulated sites (default 4)")
    parser.add_argument("--output", required=True,
                        help="report folder (evaluate) or new model folder (calibrate, finetune)")
    parser.add_argument("--min-sites", type=int, default=1,
                        help="fewest sites with valid results for a round to count")
    parser.add_argument("--bins", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--drift-threshold", type=float, default=0.05,
                        help="ACE gap that flags a site (evaluate)")
    parser.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess")


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.federated import (
        federated_calibrate,
        federated_evaluate,
        federated_finetune,
        simulated_sites,
    )
    from CalibSegLib.federated.cohort import parse_site_folders

    sites = (parse_site_folders(args.site) if args.site else
             simulated_sites(args.sites, args.cases_per_site, resolution_mm=args.resolution))
    quiet = getattr(args, "quiet", False)
    if args.task == "evaluate":
        result, _ = federated_evaluate(args.model, sites, output=args.output, n_bins=args.bins,
                                       min_sites=args.min_sites, engine=args.engine,
                                       drift_threshold=args.drift_threshold)
        if not quiet:
            pooled = result.pooled_metrics()
            print(f"pooled over {sum(o.status == 'ok' for o in result.outcomes)} site(s): "
                  + ", ".join(f"{k} {pooled[k]:.4f}" for k in ("ace", "ece", "mce")
                              if k in pooled))
            for o in result.outcomes:
                print(f"  {o.site}: {o.status} {o.reason}".rstrip())
            for f in result.flags:
                print(f"  {f.site}: {f.reason}")
            print(f"report: {args.output}")
    elif args.task == "calibrate":
        result, _ = federated_calibrate(args.model, sites, output_model=args.output,
                                        min_sites=args.min_sites, engine=args.engine)
        if not quiet:
            print(f"temperature {result.temperature:g} (pooled over {result.voxel_count} voxels); "
                  f"per site: {json.dumps(result.site_temperatures)}")
            print(f"model: {args.output}")
    else:
        result, _ = federated_finetune(args.model, sites, output_model=args.output,
                                       rounds=args.rounds, local_steps=args.local_steps,
                                       lr=args.lr, n_bins=args.bins, min_sites=args.min_sites,
                                       engine=args.engine)
        if not quiet:
            print(f"{result.rounds} FedAvg round(s); model {result.model.card.version}: "
                  f"{args.output}")
    return 0
