"""Save and load a :class:`~CalibSegLib.inference.prediction.Prediction` (one ``.npz`` file).

Two layouts, told apart on reading:

- **compact** (``Prediction.scores`` set): the top-k hand-over file of
  :func:`~CalibSegLib.inference.topk_io.write_topk` (stored ZIP members,
  memory-mappable): ``indices``, ``gaps``, ``tail`` (at most 16 bytes per voxel),
  the float32 ``confidence`` and ``entropy`` maps at the prediction's temperature
  (8 bytes per voxel, so loading computes nothing), ``affine`` and a JSON header
  whose ``meta["prediction"]`` holds the other fields (model name and version,
  class colours, run information). No per-class float32 array is written.
  :func:`load_prediction` memory-maps the arrays: a viewer pages in only the
  slices it shows.
- **full**: every array field except ``probs``, ``confidence`` and ``entropy``
  (recomputed from the logits at the stored temperature on loading), and the
  other fields as UTF-8 JSON in ``__meta__`` (``uint8``). Files written by
  earlier versions of the Slicer module's inference process have this layout.

Writes are atomic (temporary file beside the target, then renamed); nothing is
ever unpickled (``allow_pickle=False``; object arrays refused).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any

import numpy as np

from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import atomic_path
from CalibSegLib.inference.prediction import Prediction, probability_maps_array, topk_maps
from CalibSegLib.inference.topk_io import (
    TOPK_MEMBERS,
    is_topk_file,
    read_topk_file,
    write_topk,
    zip_member_names,
)

#: Fields of the full layout recomputed from the logits on loading.
RECOMPUTED = ("probs", "confidence", "entropy")
#: Header key of the compact layout's other fields.
_PREDICTION_META = "prediction"
_META_MEMBER = "__meta__"


def _plain(value: Any) -> Any:
    """JSON-ready copy of a field value (tuples as lists, numpy scalars as numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _rgb(color: Any) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in color)
    return r, g, b


def save_prediction(path: str, prediction: Prediction) -> str:
    """Write ``prediction`` to ``path`` (``.npz``) atomically; return the path.

    The compact form goes to the memory-mappable top-k layout, the full form to
    the full layout (module docstring).

    Raises
    ------
    CalibSegError
        A path not ending in ``.npz``, or an output folder that does not exist or
        is not writable.
    """

    if not str(path).endswith(".npz"):
        raise CalibSegError(f"A prediction file ends in .npz, got {path!r}.")
    if prediction.scores is not None:
        meta = {_PREDICTION_META: {
            "model_name": prediction.model_name, "model_version": prediction.model_version,
            "class_names": list(prediction.class_names),
            "class_colors": _plain(prediction.class_colors), "info": _plain(prediction.info)}}
        scores = dataclasses.replace(prediction.scores, temperature=prediction.temperature,
                                     affine=np.asarray(prediction.affine, np.float64))
        return write_topk(str(path), scores, meta,
                          arrays={"confidence": np.asarray(prediction.confidence, np.float32),
                                  "entropy": np.asarray(prediction.entropy, np.float32)})
    arrays: dict[str, np.ndarray] = {}
    meta_fields: dict[str, Any] = {}
    for f in dataclasses.fields(prediction):  # not asdict: it would deep-copy every array
        value = getattr(prediction, f.name)
        if value is None or f.name in RECOMPUTED or f.name == "scores":
            continue
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        else:
            meta_fields[f.name] = _plain(value)
    arrays[_META_MEMBER] = np.frombuffer(json.dumps(meta_fields).encode("utf-8"), np.uint8)
    with atomic_path(str(path)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
    return str(path)


def is_prediction_file(path: str) -> bool:
    """Whether ``path`` is a file of :func:`save_prediction` (either layout), by its members."""
    names = zip_member_names(path)
    return names >= TOPK_MEMBERS or names >= {_META_MEMBER, "logits"}


def load_prediction(path: str, mmap: bool = True) -> Prediction:
    """The :class:`Prediction` in a file of :func:`save_prediction` (either layout).

    Compact files: with ``mmap`` (default) the top-k arrays and the maps are
    read-only memory maps of the file (nothing read until used). Full files: read
    into memory; probabilities and maps recomputed at the stored temperature.

    Raises
    ------
    CalibSegError
        Missing, damaged or other-format file (one line, says what to do).
    """
    if not os.path.isfile(path):
        raise CalibSegError(f"No prediction file at {path}.")
    if is_topk_file(path):
        return _load_compact(path, mmap)
    return _load_full(path)


def _load_compact(path: str, mmap: bool) -> Prediction:
    scores, meta, extra = read_topk_file(path, mmap)
    fields = meta.get(_PREDICTION_META, {})
    if "confidence" in extra and "entropy" in extra:
        confidence, entropy = extra["confidence"], extra["entropy"]
    else:  # a bare top-k file: maps computed now

        confidence, entropy = topk_maps(scores)
    affine = np.eye(4) if scores.affine is None else np.asarray(scores.affine, np.float64)
    names = tuple(str(c) for c in fields.get("class_names", scores.class_names)) or tuple(
        f"class {c}" for c in range(scores.num_classes))
    return Prediction(
        logits=None, probs=None, labels=scores.labels(), confidence=confidence,
        entropy=entropy, affine=affine, class_names=names, temperature=scores.temperature,
        model_name=str(fields.get("model_name", "")),
        model_version=str(fields.get("model_version", "")),
        class_colors=tuple(_rgb(c) for c in fields.get("class_colors", ())),
        info=dict(fields.get("info", {})), scores=scores)


def _load_full(path: str) -> Prediction:
    try:
        with np.load(path, allow_pickle=False) as data:
            if _META_MEMBER not in data.files or "logits" not in data.files:
                raise CalibSegError(
                    f"{path} is not a prediction file (no logits or header); write it with "
                    "save_prediction.")
            fields: dict[str, Any] = {k: np.array(data[k]) for k in data.files
                                      if k != _META_MEMBER}
            header = json.loads(bytes(data[_META_MEMBER]).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError) as exc:
        raise CalibSegError(f"Cannot read the prediction file {path}: {exc}.") from exc
    known = {f.name for f in dataclasses.fields(Prediction)}
    fields.update((k, v) for k, v in header.items() if k in known)
    fields["class_names"] = tuple(str(c) for c in fields.get("class_names", ()))
    fields["class_colors"] = tuple(_rgb(c) for c in fields.get("class_colors", ()))
    fields["temperature"] = float(fields.get("temperature", 1.0))
    probs, confidence, entropy = probability_maps_array(
        np.ascontiguousarray(fields["logits"], dtype=np.float32), fields["temperature"])
    fields.update(probs=probs, confidence=confidence, entropy=entropy)
    return Prediction(**fields)
