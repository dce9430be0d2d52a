"""Explanations of segmentation models and the evidence that they are faithful.

Every method returns an :class:`Explanation`: a map on the input grid with what
it explains, how it reached that grid and, on request, faithfulness scores
against random maps of equal histogram.
"""

from CalibSegLib.explain.adapt import as_segmenter
from CalibSegLib.explain.api import (
    check_contributions,
    explain,
    random_explanation,
    resolve_class,
    save_explanation,
)
from CalibSegLib.explain.faithfulness import (
    activation_precision,
    deletion_insertion,
    evaluate_faithfulness,
    faithfulness_correlation,
    random_map,
)
from CalibSegLib.explain.posthoc import (
    bottleneck_layer,
    default_layer,
    gradcam_map,
    list_layers,
    occlusion_map,
)
from CalibSegLib.explain.prototype import rank_prototypes
from CalibSegLib.explain.region import RegionScore, region_mask
from CalibSegLib.explain.segmenter import Segmenter
from CalibSegLib.explain.table import explanation_table, format_table
from CalibSegLib.explain.types import METHODS, Explanation

__all__ = [
    "METHODS", "Explanation", "RegionScore", "Segmenter", "activation_precision",
    "as_segmenter", "bottleneck_layer", "check_contributions", "default_layer",
    "deletion_insertion",
    "evaluate_faithfulness", "explain", "explanation_table", "faithfulness_correlation",
    "format_table", "gradcam_map", "list_layers", "occlusion_map", "random_explanation",
    "random_map", "rank_prototypes", "region_mask", "resolve_class", "save_explanation",
]
