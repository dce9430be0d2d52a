"""Export of the shown results to files: labels, confidence, entropy, metrics.

Per model ``<slot>-<name>-labels.nii.gz`` (class index, uint8 up to 256 classes),
``-confidence.nii.gz`` and ``-entropy.nii.gz`` (float32, at the temperature
shown) on the input volume's grid, and ``-metrics.json`` when there is a
reference. Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import atomic_path, write_image
from CalibSegSlicer.results import ModelResult


def safeName(name: str) -> str:
    """``name`` with characters other than letters, digits, ``-_.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def exportResults(results: Mapping[str, ModelResult], affine: np.ndarray, folder: str
                  ) -> list[str]:
    """Write every result's maps (and metrics) into ``folder``; return the paths written."""
    if not results:
        raise CalibSegError("Nothing to export: apply a model first.")
    if not folder:
        raise CalibSegError("No export folder chosen: choose a folder to write into.")
    os.makedirs(folder, exist_ok=True)
    written = []
    for slot, result in results.items():
        stem = os.path.join(folder, f"{slot}-{safeName(result.name)}")
        current = result.current
        for key, values in (("labels", current.labels),  # uint8 (uint16 beyond 256 classes)
                            ("confidence", np.asarray(current.confidence, np.float32)),
                            ("entropy", np.asarray(current.entropy, np.float32))):
            written.append(write_image(f"{stem}-{key}.nii.gz", np.asarray(values), affine))
        if result.metrics is not None:
            path = f"{stem}-metrics.json"
            document = {"model": result.name, "version": result.model.card.version,
                        "temperature": result.temperature,
                        "metrics": jsonable(result.metrics)}
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                json.dump(document, fh, indent=2)
            written.append(path)
    return written


def jsonable(value):
    """Metrics (nested dicts, lists, numpy values) as JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
