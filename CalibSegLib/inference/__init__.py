"""Inference: :func:`predict` a volume with a model, :func:`apply_temperature` without re-running.

All results are on the input grid; see :class:`Prediction` for the fields and
their memory use.
"""

from CalibSegLib.inference.predict import predict, resolve_device, validate_input
from CalibSegLib.inference.prediction import Prediction, apply_temperature, probability_maps
from CalibSegLib.inference.resample import model_grid, resample

__all__ = ["Prediction", "apply_temperature", "model_grid", "predict", "probability_maps",
           "resample", "resolve_device", "validate_input"]
