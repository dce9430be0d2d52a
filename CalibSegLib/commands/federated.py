"""``calibseg federated``: cross-site validation, calibration and fine-tuning (Flower).

* ``evaluate | calibrate | finetune`` — N simulated sites in this process;
* ``local TASK`` — the same task on a real local Flower deployment (SuperLink and one
  SuperNode per site as processes on 127.0.0.1, TLS, SuperNode authentication, ``flwr run``);
* ``credentials`` — TLS certificates for the SuperLink and one key pair per site;
* ``deploy`` — the exact commands the coordinator and each site run for a real federation.
"""

from __future__ import annotations

import argparse

from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import refuse_overwrite

NAME = "federated"
HELP = ("validate, recalibrate or fine-tune across sites without sharing images "
        "(Flower: simulated sites, a local test federation, or the commands of a real one)")
EXAMPLE = ("calibseg federated evaluate --model MODEL --sites 3 -o fed-report\n"
           "  calibseg federated local evaluate --model MODEL --sites 2 -o fed-report\n"
           "  calibseg federated credentials --host fl.example.org --site north --site south\n"
           "  calibseg federated deploy --host fl.example.org --site north=/data/cohort "
           "--site south=/data/cohort --model MODEL -o /reports/round-1")

TASKS = ("evaluate", "calibrate", "finetune")
DEFAULT_CREDENTIALS = "federation-credentials"


class _DefaultsShown(argparse.HelpFormatter):
    """Help that names each option's default (unless its text already does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and action.default not in (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="print the summary line only")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")


def _task_arguments(p: argparse.ArgumentParser, simulated: bool) -> None:
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("-o", "--output", required=True,
                   help="report folder (evaluate) or new model folder (calibrate, finetune)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder (default: refuse)")
    p.add_argument("--sites", type=int, default=3,
                   help="number of simulated sites holding shifted sample variants")
    p.add_argument("--site", action="append", default=[], metavar="NAME=FOLDER",
                   help="a site with a folder of <id>_image/<id>_labels pairs "
                   "(repeat; replaces --sites)")
    p.add_argument("--cases-per-site", type=int, default=1,
                   help="sample cases each simulated site holds")
    p.add_argument("--resolution", type=float, default=None,
                   help="sample grid in mm for simulated sites (default: the model's spacing)")
    p.add_argument("--min-sites", type=int, default=1,
                   help="fewest sites with valid results for a round to count")
    p.add_argument("--bins", type=int, default=20, help="confidence bins")
    p.add_argument("--rounds", type=int, default=1, help="FedAvg rounds (finetune)")
    p.add_argument("--local-steps", type=int, default=2,
                   help="optimiser steps per site and round (finetune)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (finetune)")
    p.add_argument("--drift-threshold", type=float, default=0.05,
                   help="ACE gap that flags a site (evaluate)")
    p.add_argument("--flower-log", default="warning",
                   choices=["error", "warning", "info", "debug"],
                   help="Flower's log level (default warning; -q: errors only)")
    if simulated:
        p.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess")
    else:
        p.add_argument("--timeout", type=float, default=300.0,
                       help="seconds any wait may take (processes up, sites, the run)")
        p.add_argument("--workdir", help="folder for credentials, logs and Flower's state "
                       "(default: a new temporary folder, kept for reading the logs)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibseg federated`` actions and their options to ``parser``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = _DefaultsShown
    for task in TASKS:
        p = sub.add_parser(task, help=f"{task} across simulated sites in this process",
                           formatter_class=fmt)
        _common(p)
        _task_arguments(p, simulated=True)
    local = sub.add_parser("local", help="run a task on a local Flower deployment "
                           "(SuperLink + one SuperNode per site on 127.0.0.1, TLS, node keys)",
                           formatter_class=fmt)
    _common(local)
    local.add_argument("task", choices=TASKS)
    _task_arguments(local, simulated=False)

    cred = sub.add_parser("credentials", help="create the SuperLink's TLS certificates and "
                          "one SuperNode key pair per site (cryptography)", formatter_class=fmt)
    _common(cred)
    cred.add_argument("-o", "--output", default=DEFAULT_CREDENTIALS,
                      help=f"folder for the files (default {DEFAULT_CREDENTIALS}/)")
    cred.add_argument("--host", action="append", default=[],
                      help="DNS name or IP address sites use to reach the SuperLink (repeat; "
                      "default localhost and 127.0.0.1)")
    cred.add_argument("--site", action="append", default=[], metavar="NAME",
                      help="a site to create a key pair for (repeat)")
    cred.add_argument("--days", type=int, default=365, help="certificate validity")
    cred.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                      help="replace existing files (default: refuse)")

    deploy = sub.add_parser("deploy", help="print the exact flower-superlink, "
                            "flwr supernode register, flower-supernode and flwr run commands",
                            formatter_class=fmt)
    _common(deploy)
    deploy.add_argument("--host", required=True, help="the SuperLink's host name (in its "
                        "certificate)")
    deploy.add_argument("--port", type=int, default=9093, help="the SuperLink's port")
    deploy.add_argument("--credentials", default=DEFAULT_CREDENTIALS,
                        help="folder made by 'calibseg federated credentials'")
    deploy.add_argument("--site", action="append", default=[], required=True,
                        metavar="NAME=FOLDER", help="a site and its cohort folder on the site's "
                        "machine (repeat)")
    deploy.add_argument("--task", choices=TASKS, default="evaluate", help="the task to run")
    deploy.add_argument("--model", required=True, help="model folder on the coordinator")
    deploy.add_argument("-o", "--output", required=True,
                        help="report or new model folder on the coordinator")
    deploy.add_argument("--min-sites", type=int, default=1,
                        help="fewest sites with valid results for a round to count")
    deploy.add_argument("--timeout", type=float, default=600.0,
                        help="seconds the ServerApp waits for sites and their replies")
    deploy.add_argument("--write-flwr-config", metavar="FLWR_HOME",
                        help="also write the connection into FLWR_HOME/config.toml")


def _check_request(args: argparse.Namespace) -> None:
    """Refuse at once (before anything is loaded) a site count the request cannot meet."""
    n_sites = len(args.site) if args.site else args.sites
    if args.min_sites < 1:
        raise CalibSegError(f"--min-sites must be at least 1, not {args.min_sites}.")
    if n_sites < args.min_sites:
        raise CalibSegError(f"--min-sites {args.min_sites} cannot be met by {n_sites} site(s); "
                            "add sites or lower --min-sites.")


def check(args: argparse.Namespace) -> None:
    """Site counts and the output of a task before any model or site is loaded."""
    if args.action not in ("credentials", "deploy"):
        _check_request(args)
        refuse_overwrite([args.output], args.overwrite)
