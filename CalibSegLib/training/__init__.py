"""Training segmentation models: Dice+CE with the mL1-ACE calibration loss, prototype stages.

Entry points
------------
:func:`train`
    Train a model folder (card + weights + prototype gallery) from training cases.
:class:`TrainConfig`
    Network, budget, losses, seed.
:func:`sample_cases`, :func:`folder_cases`, :func:`csv_cases`
    Training cases from the embedded sample case (shifted variants), a folder or a CSV.
:func:`push_prototypes`
    Project prototypes onto real training voxels and write the gallery.
:func:`measure_throughput`
    Training speed (iterations/s, voxels/s) per calibration loss.
"""

from __future__ import annotations

import importlib

#: Public name -> defining module; loaded on first use, so that reading the
#: configuration (``calibseg train --help``, option checks) does not import torch.
_EXPORTS = {
    "TrainConfig": "config", "TrainResult": "loop", "train": "loop",
    "TrainingCase": "data", "csv_cases": "data", "folder_cases": "data",
    "format_seeds": "data", "parse_seeds": "data", "sample_cases": "data",
    "case_features": "push", "push_prototypes": "push", "measure_throughput": "throughput",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
