"""Inference: :func:`predict` a volume with a model, :func:`apply_temperature` without re-running.

All results are on the input grid; see :class:`Prediction` for the fields and
their memory use. :class:`TopKPrediction` is the compact form (at most 16 bytes per
voxel for any class count): ``predict(..., form="compact")`` gives a
:class:`Prediction` holding it (``Prediction.scores``); :func:`compact_logits`,
:func:`sliding_window_topk`, :func:`write_topk` / :func:`read_topk`; :func:`stats_from_topk`
(reliability statistics of a top-k form without expanding it).
:func:`save_prediction` / :func:`load_prediction` write and read either form.
"""

from CalibSegLib.inference.predict import (
    FULL_PRECISION_BUDGET_BYTES,
    predict,
    resolve_device,
    validate_input,
)
from CalibSegLib.inference.prediction import Prediction, apply_temperature, probability_maps
from CalibSegLib.inference.prediction_io import load_prediction, save_prediction
from CalibSegLib.inference.resample import model_grid, resample
from CalibSegLib.inference.streaming import sliding_window_topk
from CalibSegLib.inference.topk import TopKPrediction, compact_logits
from CalibSegLib.inference.topk_io import read_topk, write_topk
from CalibSegLib.inference.topk_stats import stats_from_topk

__all__ = ["FULL_PRECISION_BUDGET_BYTES", "Prediction", "TopKPrediction", "apply_temperature",
           "compact_logits", "load_prediction", "model_grid", "predict", "probability_maps",
           "read_topk", "resample", "resolve_device", "save_prediction", "sliding_window_topk",
           "stats_from_topk", "validate_input", "write_topk"]
