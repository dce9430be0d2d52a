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

from CalibSegLib.training.config import TrainConfig
from CalibSegLib.training.data import (
    TrainingCase,
    csv_cases,
    folder_cases,
    format_seeds,
    parse_seeds,
    sample_cases,
)
from CalibSegLib.training.loop import TrainResult, train
from CalibSegLib.training.push import case_features, push_prototypes
from CalibSegLib.training.throughput import measure_throughput

__all__ = [
    "TrainConfig", "TrainResult", "TrainingCase", "case_features", "csv_cases", "folder_cases",
    "format_seeds", "measure_throughput", "parse_seeds", "push_prototypes", "sample_cases", "train",
]
