"""One call per federated task: evaluate, calibrate (temperature), fine-tune."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import server
from CalibSegLib.federated.cohort import SiteSpec
from CalibSegLib.federated.loopback import Fault
from CalibSegLib.federated.report import write_evaluation_report, write_json
from CalibSegLib.federated.simulation import run_federation
from CalibSegLib.progress import CancelCallback, ProgressCallback


def _model(model):
    if isinstance(model, str | os.PathLike):
        from CalibSegLib.models import load_model

        return load_model(os.fspath(model))
    return model


def federated_evaluate(model, sites: Sequence[SiteSpec], *, output: str | None = None,
                       n_bins: int = 20, min_sites: int = 1, engine: str = "inprocess",
                       faults: Mapping[str, Fault] | None = None, drift_threshold: float = 0.05,
                       plots: bool = True, progress: ProgressCallback | None = None,
                       cancel: CancelCallback | None = None):
    """Evaluate ``model`` (folder or loaded) at every site; write the report to ``output``.

    Returns ``(EvaluationResult, grid)``; ``grid`` is the in-process grid (or None).
    """
    model = _model(model)
    result, grid = run_federation(
        lambda g: server.evaluation_round(g, model, n_bins=n_bins, min_sites=min_sites,
                                          drift_threshold=drift_threshold, progress=progress,
                                          cancel=cancel),
        sites, engine=engine, faults=faults)
    if output:
        write_evaluation_report(result, output, plots=plots)
    return result, grid


def federated_calibrate(model, sites: Sequence[SiteSpec], *, output_model: str | None = None,
                        temperatures: Sequence[float] = server.DEFAULT_TEMPERATURES,
                        min_sites: int = 1, engine: str = "inprocess",
                        faults: Mapping[str, Fault] | None = None,
                        cancel: CancelCallback | None = None):
    """Fit the temperature across sites; optionally save a model copy with it in the card.

    Returns ``(TemperatureResult, grid)``.
    """
    model = _model(model)
    result, grid = run_federation(
        lambda g: server.temperature_round(g, model, temperatures=temperatures,
                                           min_sites=min_sites, cancel=cancel),
        sites, engine=engine, faults=faults)
    if output_model:
        from CalibSegLib.models import save_model

        training = dict(model.card.training or {})
        training["federated_temperature"] = result.to_dict()
        card = model.card.replace(temperature=result.temperature, training=training)
        save_model(output_model, card, model.network)
        write_json(os.path.join(output_model, "federated_temperature.json"), result.to_dict())
    return result, grid


def federated_finetune(model, sites: Sequence[SiteSpec], *, output_model: str, rounds: int = 1,
                       local_steps: int = 2, lr: float = 1e-3, calibration_weight: float = 1.0,
                       n_bins: int = 20, min_sites: int = 1, engine: str = "inprocess",
                       faults: Mapping[str, Fault] | None = None, seed: int = 0,
                       evaluate: bool = True, progress: ProgressCallback | None = None,
                       cancel: CancelCallback | None = None):
    """FedAvg fine-tuning; saves the new model folder (card records rounds, sites, metrics).

    Returns ``(FinetuneResult, grid)``.
    """
    if os.path.exists(output_model):
        raise CalibSegError(f"{output_model} already exists; choose a new model folder.")
    model = _model(model)
    result, grid = run_federation(
        lambda g: server.finetune_rounds(g, model, rounds=rounds, local_steps=local_steps, lr=lr,
                                         calibration_weight=calibration_weight, n_bins=n_bins,
                                         min_sites=min_sites, seed=seed, evaluate=evaluate,
                                         progress=progress, cancel=cancel),
        sites, engine=engine, faults=faults)
    from CalibSegLib.models import save_model

    save_model(output_model, result.model.card, result.model.network)
    return result, grid
