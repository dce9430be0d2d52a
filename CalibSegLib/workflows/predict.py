"""``calibseg predict``: segment an image and write probability, confidence and explanation maps.

A full-precision prediction writes the probability map (one component per class);
a compact one (``--form compact``, or ``auto`` beyond the full form's memory budget)
writes the prediction file ``<stem>_prediction.npz`` instead (top-k scores, at most
16 bytes per voxel, memory-mappable; read by ``evaluate --probs``), and the
probability map only with ``--probs``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

from CalibSegLib.commands.predict import PREDICTION_FILE
from CalibSegLib.dicom import read_series_datasets, write_confidence_map, write_segmentation
from CalibSegLib.files import image_stem
from CalibSegLib.inference import predict, resolve_device, save_prediction
from CalibSegLib.io import read_image, write_image
from CalibSegLib.models import load_model
from CalibSegLib.workflows.console import progress_bar, warn_if_label_image

NAME = "predict"


def outputs(prediction, probs: bool | None = None) -> dict[str, tuple]:
    """``{suffix: (array (Z, Y, X[, C]), is_vector)}`` of what ``predict`` writes.

    ``probs``: write the probability map; default for full-precision predictions only
    (a compact one expands it from its top-k scores, ``C`` float32 maps).
    """
    files = {"seg": (prediction.labels, False)}
    if (not prediction.is_compact) if probs is None else probs:
        files["probs"] = (np.moveaxis(prediction.probabilities(), 0, -1), True)
    files.update({
        "confidence": (prediction.confidence, False),
        "entropy": (prediction.entropy, False),
    })
    if prediction.is_prototype:
        files.update({
            "top_similarity": (prediction.top_similarity, False),
            "nearest_prototype": (prediction.nearest_prototype, False),
            "prototype_contribution": (prediction.prototype_contribution, False),
        })
    return files


def write_prediction(prediction, folder: str, stem: str, fmt: str = ".nii.gz",
                     probs: bool | None = None, save: bool | None = None) -> list[str]:
    """Write every map of ``prediction`` to ``folder`` as ``<stem>_<map><fmt>`` plus a JSON.

    ``probs``: as :func:`outputs`. ``save``: also write ``<stem>_prediction.npz``
    (:func:`~CalibSegLib.inference.save_prediction`); default for compact
    predictions only. All files are written to a temporary folder first and moved
    into place only when every one was written, so a failure leaves no partial result.
    """
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".calibseg-predict-", dir=folder)
    try:
        names = []
        for key, (array, vector) in outputs(prediction, probs).items():
            name = f"{stem}_{key}{fmt}"
            write_image(os.path.join(tmp, name), array, prediction.affine, vector=vector)
            names.append(name)
        if prediction.is_compact if save is None else save:  # compact: saved by default
            name = f"{stem}_{PREDICTION_FILE}"
            save_prediction(os.path.join(tmp, name), prediction)
            names.append(name)
        meta = {
            "model": {"name": prediction.model_name, "version": prediction.model_version},
            "class_names": list(prediction.class_names),
            "class_colors": [list(c) for c in prediction.class_colors],
            "temperature": prediction.temperature,
            "form": "compact" if prediction.is_compact else "full",
            "files": names,
            "info": {k: v for k, v in prediction.info.items()
                     if isinstance(v, (str, int, float, bool, list))},
        }
        if prediction.is_prototype:
            meta["prototype_class"] = prediction.prototype_class.tolist()
        name = f"{stem}_prediction.json"
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        names.append(name)
        written = []
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
            written.append(os.path.join(folder, name))
        return written
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def write_dicom(prediction, series_folder: str, folder: str, stem: str) -> list[str]:
    """Write the DICOM SEG and confidence Parametric Map of ``prediction`` on its source series."""
    sources = read_series_datasets(series_folder, pixels=False)  # headers suffice
    os.makedirs(folder, exist_ok=True)
    model = {"model_name": prediction.model_name, "model_version": prediction.model_version}
    return [
        write_segmentation(prediction.labels, sources, os.path.join(folder, f"{stem}_seg.dcm"),
                           class_names=prediction.class_names,
                           class_colors=prediction.class_colors,
                           temperature=prediction.temperature, **model),
        write_confidence_map(prediction.confidence, sources,
                             os.path.join(folder, f"{stem}_confidence.dcm"), label="CONFIDENCE",
                             explanation=f"max softmax probability, T={prediction.temperature:g}",
                             **model),
    ]


def run(args: argparse.Namespace) -> int:
    """``calibseg predict`` after its checks: predict, write the maps and the record."""
    quiet = getattr(args, "quiet", False)
    image, affine = read_image(args.image)
    warn_if_label_image(NAME, image, args.image)
    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    with progress_bar(NAME, quiet) as progress:
        prediction = predict(image, affine, model, device=str(device),
                             progress=progress, overlap=args.overlap,
                             sw_batch_size=args.sw_batch_size, maps=not args.no_maps,
                             temperature=args.temperature, form=args.form)
    written = write_prediction(prediction, args.output, image_stem(args.image), args.format,
                               probs=True if args.probs else None,
                               save=True if args.save_prediction else None)
    if args.dicom_out:
        written += write_dicom(prediction, args.image, args.dicom_out, image_stem(args.image))
    if not quiet:
        info = prediction.info
        print(f"{model.name} {model.version} on {info.get('device')}: "
              f"{prediction.shape} voxels, {info.get('windows')} windows, "
              f"{info.get('seconds', 0):.1f} s, temperature {prediction.temperature:g}, "
              f"{info.get('form', 'full')} form")
        for path in written:
            print(f"wrote {path}")
    return 0
