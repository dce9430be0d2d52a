"""Cross-site validation and continuous training without sharing images (Flower).

Sites keep their scans; they send the server bounded statistics (reliability
bins, Dice counts, NLL sums over a temperature grid) or model updates. Because
reliability statistics merge exactly, the pooled federated numbers equal the
numbers a central evaluation of all cohorts would give. See ``docs/federated.md``.

Entry points: :func:`federated_evaluate`, :func:`federated_calibrate`,
:func:`federated_finetune` (N sites on one machine), :class:`SiteSpec` (a site's
cohort), and :mod:`CalibSegLib.federated.app` (ServerApp/ClientApp for real sites).
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
