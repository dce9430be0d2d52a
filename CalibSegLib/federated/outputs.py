"""What a federated task leaves behind (report or model folder) and its one-line summary.

The same functions serve the simulated federation (``calibseg federated evaluate ...``)
and the deployed ServerApp, so both write the same files and print the same line.
"""

from __future__ import annotations

import os

from CalibSegLib.federated.model_output import save_derived_model
from CalibSegLib.federated.report import write_evaluation_report, write_json


def _sites(outcomes) -> str:
    ok = sum(o.status == "ok" for o in outcomes)
    missing = [f"{o.site} {o.status}" for o in outcomes if o.status != "ok"]
    return f"{ok} site(s)" + (f"; not pooled: {', '.join(missing)}" if missing else "")


def evaluation_line(result) -> str:
    """``pooled over N site(s): ace …, ece …, mce …`` (from the merged statistics)."""
    pooled = result.pooled_metrics()
    values = ", ".join(f"{k} {pooled[k]:.4f}" for k in ("ace", "ece", "mce", "mean_dice")
                       if k in pooled)
    return f"pooled over {_sites(result.outcomes)}: {values}"


def write_evaluation(result, output: str, plots: bool = True) -> dict:
    """The evaluation report in ``output``; returns ``{"line", "files"}``."""
    files = write_evaluation_report(result, output, plots=plots)
    return {"line": f"{evaluation_line(result)}; report {output}", "files": files}


def write_calibrated_model(model, result, output: str, overwrite: bool = False) -> dict:
    """A complete model folder ``<name>-calibrated`` with the pooled temperature."""
    details = result.to_dict()
    folder = save_derived_model(
        output, model, model.network, suffix="calibrated", record_key="federated_temperature",
        change=f"temperature {model.temperature:g} -> {result.temperature:g}, fitted across "
               f"{sum(o.status == 'ok' for o in result.outcomes)} site(s)",
        details=details, temperature=result.temperature, overwrite=overwrite)
    write_json(os.path.join(folder, "federated_temperature.json"), details)
    return {"line": calibration_line(result, folder), "files": {"model": folder}}


def calibration_line(result, folder: str) -> str:
    """``temperature T pooled over N voxels at K site(s); model FOLDER``."""
    return (f"temperature {result.temperature:g} pooled over {result.voxel_count} voxels at "
            f"{_sites(result.outcomes)}; model {os.path.abspath(folder)}")


def finetune_line(result, folder: str) -> str:
    """``R FedAvg round(s) at K site(s); model FOLDER``."""
    last = result.outcomes.get(result.rounds, [])
    return f"{result.rounds} FedAvg round(s) at {_sites(last)}; model {os.path.abspath(folder)}"


def write_finetuned_model(model, result, output: str, overwrite: bool = False) -> dict:
    """A complete model folder ``<name>-fed`` with the FedAvg weights and their record."""
    details = dict(result.model.card.training.get("federated", {}))
    folder = save_derived_model(
        output, model, result.model.network, suffix="fed", record_key="federated",
        change=f"{result.rounds} FedAvg round(s) of fine-tuning across sites", details=details,
        overwrite=overwrite)
    return {"line": finetune_line(result, folder), "files": {"model": folder}}
