"""Cross-site validation and continuous training without sharing images (Flower).

Sites keep their scans; they send the server bounded statistics (reliability
bins, Dice counts, NLL sums over a temperature grid) or model updates. Because
reliability statistics merge exactly, the pooled federated numbers equal the
numbers a central evaluation of all cohorts would give. See ``docs/federated.md``.

Entry points: :func:`federated_evaluate`, :func:`federated_calibrate`,
:func:`federated_finetune` (N simulated sites in one process), :class:`SiteSpec` (a
site's cohort), :mod:`CalibSegLib.federated.app` (the ServerApp/ClientApp a real
deployment runs), :mod:`CalibSegLib.federated.deployment` (its exact commands),
:mod:`CalibSegLib.federated.credentials` (TLS certificates, SuperNode keys) and
:class:`CalibSegLib.federated.local.LocalFederation` (a real deployment on this machine).
"""

from CalibSegLib.federated.api import federated_calibrate, federated_evaluate, federated_finetune
from CalibSegLib.federated.protocol import PayloadRejected
from CalibSegLib.federated.server import (
    EvaluationResult,
    FinetuneResult,
    SiteOutcome,
    TemperatureResult,
)
from CalibSegLib.federated.sites import SiteSpec, load_cohort, simulated_sites

__all__ = [
    "EvaluationResult", "FinetuneResult", "PayloadRejected", "SiteOutcome", "SiteSpec",
    "TemperatureResult", "federated_calibrate", "federated_evaluate", "federated_finetune",
    "load_cohort", "simulated_sites",
]
