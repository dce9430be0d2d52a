"""``calibseg federated``: cross-site validation, calibration and fine-tuning (Flower).

Simulated sites in this process, a local Flower deployment, TLS credentials, or the
commands of a real deployment; see :mod:`CalibSegLib.commands.federated` for the actions.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile

from flwr.common.logger import update_console_handler

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import api, outputs, simulated_sites
from CalibSegLib.federated.credentials import (
    LOCAL_HOSTS,
    create_certificates,
    create_supernode_keys,
)
from CalibSegLib.federated.deployment import DeploymentPlan, SiteDeployment, flwr_config_toml
from CalibSegLib.federated.local import LocalFederation
from CalibSegLib.federated.sites import parse_site_folders
from CalibSegLib.models import load_model
from CalibSegLib.models.card import ModelCard


@contextlib.contextmanager
def _flower_logging(level: str, quiet: bool):
    """Flower's console log at ``level`` (errors only when quiet), colour only on a terminal."""
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
    if args.site:
        return parse_site_folders(args.site)
    if args.resolution is not None and args.resolution != max(model_spacing) and not quiet:
        print(f"warning: simulated sites on a {args.resolution:g} mm grid; the model works at "
              f"{'x'.join(f'{v:g}' for v in model_spacing)} mm", file=sys.stderr)
    return simulated_sites(args.sites, args.cases_per_site, resolution_mm=args.resolution)


def _run_simulated(args: argparse.Namespace, quiet: bool) -> str:
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


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``calibseg federated`` action after its checks; return the exit code."""
    quiet = bool(getattr(args, "quiet", False))
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
