"""One call per federated task on simulated sites: evaluate, calibrate (temperature), fine-tune."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import outputs, server
from CalibSegLib.federated.loopback import Fault
from CalibSegLib.federated.simulation import run_federation
from CalibSegLib.federated.sites import SiteSpec
from CalibSegLib.io import refuse_overwrite
from CalibSegLib.models import load_model
from CalibSegLib.progress import CancelCallback, ProgressCallback


def _model(model):
    if isinstance(model, str | os.PathLike):
        return load_model(os.fspath(model))
    return model


def check_request(sites: Sequence[SiteSpec], min_sites: int) -> None:
    """Refuse at once a request the given sites cannot meet."""
    if min_sites < 1:
        raise CalibSegError(f"--min-sites must be at least 1, not {min_sites}.")
    if len(sites) < min_sites:
        raise CalibSegError(f"--min-sites {min_sites} cannot be met by {len(sites)} site(s); "
                            "add sites or lower --min-sites.")


def federated_evaluate(model, sites: Sequence[SiteSpec], *, output: str | None = None,
                       n_bins: int = 20, min_sites: int = 1, engine: str = "inprocess",
                       faults: Mapping[str, Fault] | None = None, drift_threshold: float = 0.05,
                       plots: bool = True, progress: ProgressCallback | None = None,
                       cancel: CancelCallback | None = None):
    """Evaluate ``model`` (folder or loaded) at every site; write the report to ``output``.

    Returns ``(EvaluationResult, grid)``; ``grid`` is the in-process grid (or None).
    """
    check_request(sites, min_sites)
    model = _model(model)
    result, grid = run_federation(
        lambda g: server.evaluation_round(g, model, n_bins=n_bins, min_sites=min_sites,
                                          drift_threshold=drift_threshold, progress=progress,
                                          cancel=cancel),
        sites, engine=engine, faults=faults)
    if output:
        outputs.write_evaluation(result, output, plots=plots)
    return result, grid


def federated_calibrate(model, sites: Sequence[SiteSpec], *, output_model: str | None = None,
                        temperatures: Sequence[float] = server.DEFAULT_TEMPERATURES,
                        min_sites: int = 1, engine: str = "inprocess",
                        faults: Mapping[str, Fault] | None = None,
                        cancel: CancelCallback | None = None, overwrite: bool = False):
    """Fit the temperature across sites; optionally save ``<name>-calibrated`` with it.

    Returns ``(TemperatureResult, grid)``.
    """
    check_request(sites, min_sites)
    if output_model:
        refuse_overwrite([output_model], overwrite)
    model = _model(model)
    result, grid = run_federation(
        lambda g: server.temperature_round(g, model, temperatures=temperatures,
                                           min_sites=min_sites, cancel=cancel),
        sites, engine=engine, faults=faults)
    if output_model:
        outputs.write_calibrated_model(model, result, output_model, overwrite=overwrite)
    return result, grid


def federated_finetune(model, sites: Sequence[SiteSpec], *, output_model: str, rounds: int = 1,
                       local_steps: int = 2, lr: float = 1e-3, calibration_weight: float = 1.0,
                       n_bins: int = 20, min_sites: int = 1, engine: str = "inprocess",
                       faults: Mapping[str, Fault] | None = None, seed: int = 0,
                       evaluate: bool = True, progress: ProgressCallback | None = None,
                       cancel: CancelCallback | None = None, overwrite: bool = False):
    """FedAvg fine-tuning; saves ``<name>-fed`` (card records rounds, sites, metrics).

    Returns ``(FinetuneResult, grid)``.
    """
    check_request(sites, min_sites)
    refuse_overwrite([output_model], overwrite)
    model = _model(model)
    result, grid = run_federation(
        lambda g: server.finetune_rounds(g, model, rounds=rounds, local_steps=local_steps, lr=lr,
                                         calibration_weight=calibration_weight, n_bins=n_bins,
                                         min_sites=min_sites, seed=seed, evaluate=evaluate,
                                         progress=progress, cancel=cancel),
        sites, engine=engine, faults=faults)
    outputs.write_finetuned_model(model, result, output_model, overwrite=overwrite)
    return result, grid
