"""The Flower app for real sites: ``server_app`` (SuperLink side) and ``client_app`` (SuperNodes).

The app project ``CalibSegLib/federated/calibseg-app/pyproject.toml`` names these objects;
``flwr run`` bundles that folder, the SuperLink starts ``server_app`` and every SuperNode
runs ``client_app`` from the CalibSegLib installed at the site.

Run config keys (``[tool.flwr.app.config]`` there, or ``flwr run --run-config``):
``task`` (evaluate | calibrate | finetune), ``model`` (model folder on the coordinator),
``output`` (report folder / new model folder), ``min-sites``, ``sites`` (names expected,
comma-separated), ``timeout``, ``n-bins``, ``rounds``, ``local-steps``, ``lr``,
``drift-threshold``, ``overwrite`` (replace an existing output). Each site's SuperNode sets
``--node-config "site='<name>' cohort='<folder>'"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flwr.app import Context, UserConfigValue
from flwr.serverapp import Grid, ServerApp

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import outputs, server
from CalibSegLib.federated.client import build_client_app
from CalibSegLib.models import load_model

client_app = build_client_app()
server_app = ServerApp()

TASKS = ("evaluate", "calibrate", "finetune")


def expected_sites(config: Mapping[str, UserConfigValue]) -> list[str]:
    """The ``sites`` run config value as a list of names."""
    return [s.strip() for s in str(config.get("sites", "")).split(",") if s.strip()]


def run_task(grid: Grid, config: Mapping[str, UserConfigValue]) -> dict:
    """Run the task named in ``config`` over ``grid``; write its outputs; return a summary."""
    task = str(config.get("task", "evaluate"))
    if task not in TASKS:
        raise CalibSegError(f"Unknown task {task!r}; use {', '.join(TASKS)}.")
    if not config.get("model") or not config.get("output"):
        raise CalibSegError("The run config needs 'model' (folder) and 'output' (folder).")
    model = load_model(str(config["model"]))
    output = os.path.abspath(str(config["output"]))
    overwrite = bool(config.get("overwrite", False))
    min_sites = int(config.get("min-sites", 1))
    timeout = float(config.get("timeout", 600.0))
    expected = expected_sites(config)
    n_bins = int(config.get("n-bins", 20))
    if task == "evaluate":
        evaluation = server.evaluation_round(
            grid, model, n_bins=n_bins, drift_threshold=float(config.get("drift-threshold", 0.05)),
            min_sites=min_sites, timeout=timeout, expected=expected)
        return outputs.write_evaluation(evaluation, output)
    if task == "calibrate":
        calibration = server.temperature_round(grid, model, min_sites=min_sites, timeout=timeout,
                                               expected=expected)
        return outputs.write_calibrated_model(model, calibration, output, overwrite=overwrite)
    finetuned = server.finetune_rounds(
        grid, model, rounds=int(config.get("rounds", 1)),
        local_steps=int(config.get("local-steps", 2)), lr=float(config.get("lr", 1e-3)),
        n_bins=n_bins, min_sites=min_sites, timeout=timeout, expected=expected)
    return outputs.write_finetuned_model(model, finetuned, output, overwrite=overwrite)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the task named in the run config, write its results, print the summary line."""
    summary = run_task(grid, context.run_config)
    print(f"calibseg: {summary['line']}", flush=True)
