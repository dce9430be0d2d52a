"""The Flower app for real sites: ``server_app`` (SuperLink side) and ``client_app`` (SuperNodes).

A Flower app project points at these objects (``docs/federated.md``)::

    [tool.flwr.app.components]
    serverapp = "CalibSegLib.federated.app:server_app"
    clientapp = "CalibSegLib.federated.app:client_app"

Run config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``):
``task`` (evaluate | calibrate | finetune), ``model`` (model folder on the server),
``output`` (report folder / new model folder), ``min-sites``, ``n-bins``,
``rounds``, ``local-steps``, ``lr``, ``timeout``. Each site's SuperNode sets
``--node-config "site='<name>' cohort='<folder>'"``.
"""

from __future__ import annotations

import os

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import server
from CalibSegLib.federated.client import build_client_app
from CalibSegLib.federated.report import write_evaluation_report, write_json

client_app = build_client_app()
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the task named in the run config and write its results."""
    from CalibSegLib.models import load_model, save_model

    cfg = context.run_config
    task = str(cfg.get("task", "evaluate"))
    if "model" not in cfg or "output" not in cfg:
        raise CalibSegError("The run config needs 'model' (folder) and 'output' (folder).")
    model = load_model(str(cfg["model"]))
    output = str(cfg["output"])
    common = {"min_sites": int(cfg.get("min-sites", 1)),
              "timeout": float(cfg.get("timeout", 3600.0))}
    if task == "evaluate":
        result = server.evaluation_round(grid, model, n_bins=int(cfg.get("n-bins", 20)), **common)
        write_evaluation_report(result, output)
    elif task == "calibrate":
        result = server.temperature_round(grid, model, **common)
        os.makedirs(output, exist_ok=True)
        write_json(os.path.join(output, "federated_temperature.json"), result.to_dict())
    elif task == "finetune":
        result = server.finetune_rounds(
            grid, model, rounds=int(cfg.get("rounds", 1)),
            local_steps=int(cfg.get("local-steps", 2)), lr=float(cfg.get("lr", 1e-3)),
            n_bins=int(cfg.get("n-bins", 20)), **common)
        save_model(output, result.model.card, result.model.network)
    else:
        raise CalibSegError(f"Unknown task {task!r}; use evaluate, calibrate or finetune.")
