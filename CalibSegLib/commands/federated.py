"""``calibseg federated``: cross-site validation, calibration and fine-tuning (Flower).

* ``evaluate | calibrate | finetune`` — N simulated sites in this process;
* ``local TASK`` — the same task on a real local Flower deployment (SuperLink and one
  SuperNode per site as processes on 127.0.0.1, TLS, SuperNode authentication, ``flwr run``);
* ``credentials`` — TLS certificates for the SuperLink and one key pair per site;
* ``deploy`` — the exact commands the coordinator and each site run for a real federation.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

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
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = {"formatter_class": _DefaultsShown}
    for task in TASKS:
        p = sub.add_parser(task, help=f"{task} across simulated sites in this process", **fmt)
        _common(p)
        _task_arguments(p, simulated=True)
    local = sub.add_parser("local", help="run a task on a local Flower deployment "
                           "(SuperLink + one SuperNode per site on 127.0.0.1, TLS, node keys)",
                           **fmt)
    _common(local)
    local.add_argument("task", choices=TASKS)
    _task_arguments(local, simulated=False)

    cred = sub.add_parser("credentials", help="create the SuperLink's TLS certificates and "
                          "one SuperNode key pair per site (cryptography)", **fmt)
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
                            **fmt)
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


@contextlib.contextmanager
def _flower_logging(level: str, quiet: bool):
    """Flower's console log at ``level`` (errors only when quiet), colour only on a terminal."""
    from flwr.common.logger import update_console_handler

    flwr_level = "ERROR" if quiet else level.upper()
    ours = logging.getLogger("CalibSegLib.federated")
    previous = ours.level
    ours.setLevel(logging.ERROR if quiet else logging.WARNING)
    update_console_handler(level=flwr_level, colored=sys.stderr.isatty())
    try:
        yield
    finally:
        update_console_handler(level="INFO", colored=True)
        ours.setLevel(previous)


def _sites(args: argparse.Namespace, model_spacing: tuple[float, ...], quiet: bool):
    from CalibSegLib.federated import simulated_sites
    from CalibSegLib.federated.sites import parse_site_folders

    if args.site:
        return parse_site_folders(args.site)
    if args.resolution is not None and args.resolution != max(model_spacing) and not quiet:
        print(f"warning: simulated sites on a {args.resolution:g} mm grid; the model works at "
              f"{'x'.join(f'{v:g}' for v in model_spacing)} mm", file=sys.stderr)
    return simulated_sites(args.sites, args.cases_per_site, resolution_mm=args.resolution)


def _run_simulated(args: argparse.Namespace, quiet: bool) -> str:
    from CalibSegLib.federated import api, outputs
    from CalibSegLib.models import load_model

    model = load_model(args.model)
    sites = _sites(args, model.card.spacing_mm, quiet)
    api.check_request(sites, args.min_sites)
    if args.action == "evaluate":
        result, _ = api.federated_evaluate(model, sites, n_bins=args.bins,
                                           min_sites=args.min_sites, engine=args.engine,
                                           drift_threshold=args.drift_threshold)
        written = outputs.write_evaluation(result, args.output)
        if not quiet:
            for o in result.outcomes:
                print(f"  {o.site}: {o.status} {o.reason}".rstrip())
            for f in result.flags:
                print(f"  {f.site}: {f.reason}")
        return written["line"]
    if args.action == "calibrate":
        result, _ = api.federated_calibrate(model, sites, output_model=args.output,
                                            min_sites=args.min_sites, engine=args.engine,
                                            overwrite=args.overwrite)
        if not quiet:
            for site, t in result.site_temperatures.items():
                print(f"  {site}: temperature {t:g} on its own cases")
        return outputs.calibration_line(result, args.output)
    result, _ = api.federated_finetune(model, sites, output_model=args.output,
                                       rounds=args.rounds, local_steps=args.local_steps,
                                       lr=args.lr, n_bins=args.bins, min_sites=args.min_sites,
                                       engine=args.engine, overwrite=args.overwrite)
    return outputs.finetune_line(result, args.output)


def _run_config(args: argparse.Namespace, task: str, site_names: list[str]) -> dict:
    config: dict[str, object] = {
        "task": task, "model": os.path.abspath(args.model),
        "output": os.path.abspath(args.output), "min-sites": int(args.min_sites),
        "sites": ",".join(site_names), "timeout": float(args.timeout)}
    if getattr(args, "overwrite", False):
        config["overwrite"] = True
    if task != "calibrate" and hasattr(args, "bins"):
        config["n-bins"] = int(args.bins)
    if task == "evaluate" and hasattr(args, "drift_threshold"):
        config["drift-threshold"] = float(args.drift_threshold)
    if task == "finetune" and hasattr(args, "rounds"):
        config.update({"rounds": int(args.rounds), "local-steps": int(args.local_steps),
                       "lr": float(args.lr)})
    return config


def _run_local(args: argparse.Namespace, quiet: bool) -> str:
    import tempfile

    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.federated import api
    from CalibSegLib.federated.local import LocalFederation
    from CalibSegLib.models.card import ModelCard

    card = ModelCard.from_file(os.path.join(args.model, "model.json"))
    sites = _sites(args, card.spacing_mm, quiet)
    api.check_request(sites, args.min_sites)
    workdir = args.workdir or tempfile.mkdtemp(prefix="calibseg-federation-")
    level = "ERROR" if quiet else args.flower_log.upper()
    with LocalFederation(workdir, sites, timeout=args.timeout, log_level=level) as fed:
        if not quiet:
            print(f"SuperLink https://{fed.plan.address} (TLS, SuperNode authentication); "
                  f"sites {', '.join(fed.node_ids)} online; logs in {fed.logs}")
        result = fed.run(_run_config(args, args.task, [s.name for s in sites]),
                         timeout=args.timeout)
    lines = [ln.split("calibseg: ", 1)[1] for ln in result.log.splitlines()
             if "calibseg: " in ln]
    if not result.ok:
        reason = result.details.strip().splitlines()[0] if result.details.strip() else ""
        raise CalibSegError(f"run {result.run_id} {result.status}: {reason} "
                            f"(full log: flwr log, or {fed.logs})")
    if not quiet:
        print(f"run {result.run_id}: {result.seconds:.0f} s, the SuperLink received "
              f"{result.inbound_bytes} bytes and sent {result.outbound_bytes}")
    return lines[-1] if lines else f"run {result.run_id} completed; output {args.output}"


def _credentials(args: argparse.Namespace, quiet: bool) -> str:
    from CalibSegLib.federated.credentials import (
        LOCAL_HOSTS,
        create_certificates,
        create_supernode_keys,
    )

    tls = create_certificates(args.output, args.host or LOCAL_HOSTS, days=args.days,
                              overwrite=args.overwrite)
    keys = create_supernode_keys(args.output, args.site, overwrite=args.overwrite) \
        if args.site else []
    if not quiet:
        print(f"coordinator keeps {tls.ca_key}, {tls.server_key}, {tls.server_certificate}")
        print(f"every site gets {tls.ca_certificate}")
        for k in keys:
            print(f"site {k.site} keeps {k.private_key}; register {k.public_key}")
    return f"credentials for {len(keys)} site(s) in {os.path.abspath(args.output)}"


def _deploy(args: argparse.Namespace, quiet: bool) -> str:
    from CalibSegLib.federated.deployment import (
        DeploymentPlan,
        SiteDeployment,
        flwr_config_toml,
    )
    from CalibSegLib.federated.sites import parse_site_folders

    specs = parse_site_folders(args.site)
    credentials = os.path.abspath(args.credentials)
    plan = DeploymentPlan(host=args.host, port=args.port, credentials=credentials, sites=[
        SiteDeployment(s, os.path.join(credentials, f"{s.name}.key"),
                       os.path.join(credentials, f"{s.name}.pub")) for s in specs])
    if not os.path.exists(plan.ca_certificate):
        print(f"# create the credentials first: calibseg federated credentials -o "
              f"{args.credentials} --host {args.host} "
              + " ".join(f"--site {s.name}" for s in specs), file=sys.stderr)
    text = plan.script(_run_config(args, args.task, [s.name for s in specs]))
    sys.stdout.write(text)
    if args.write_flwr_config:
        os.makedirs(args.write_flwr_config, exist_ok=True)
        path = os.path.join(args.write_flwr_config, "config.toml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(flwr_config_toml(plan.address, plan.ca_certificate, plan.connection))
        print(f"# wrote {path}", file=sys.stderr)
    return ""


def _check_request(args: argparse.Namespace) -> None:
    """Refuse at once (before anything is loaded) a site count the request cannot meet."""
    from CalibSegLib.errors import CalibSegError

    n_sites = len(args.site) if args.site else args.sites
    if args.min_sites < 1:
        raise CalibSegError(f"--min-sites must be at least 1, not {args.min_sites}.")
    if n_sites < args.min_sites:
        raise CalibSegError(f"--min-sites {args.min_sites} cannot be met by {n_sites} site(s); "
                            "add sites or lower --min-sites.")


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.io import refuse_overwrite

    quiet = bool(getattr(args, "quiet", False))
    if args.action not in ("credentials", "deploy"):
        _check_request(args)
        refuse_overwrite([args.output], args.overwrite)  # before any model or site is loaded
    if args.action == "credentials":
        line = _credentials(args, quiet)
    elif args.action == "deploy":
        line = _deploy(args, quiet)
    else:
        with _flower_logging(args.flower_log, quiet):
            line = (_run_local(args, quiet) if args.action == "local"
                    else _run_simulated(args, quiet))
    if line:
        print(line)
    return 0
