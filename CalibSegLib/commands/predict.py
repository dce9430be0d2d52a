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
import sys
import tempfile

import numpy as np

from CalibSegLib.commands import _checks
from CalibSegLib.commands._checks import add_overwrite_argument

NAME = "predict"
HELP = ("segment an image with a model; write labels, probabilities, confidence, entropy and "
        "prototype maps")
EXAMPLE = ("calibseg predict out/sample/mni-t1_image.nii.gz --model Resources/Models/dicece "
           "-o out/pred")

_FORMATS = (".nii.gz", ".nrrd", ".mha")
#: Every map ``predict`` may write (prototype maps only for prototype models).
MAP_KEYS = ("seg", "probs", "confidence", "entropy", "top_similarity", "nearest_prototype",
            "prototype_contribution")
#: The saved prediction (:func:`CalibSegLib.inference.save_prediction`) beside the maps.
PREDICTION_FILE = "prediction.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (NIfTI, NRRD, MetaImage) or DICOM series folder")
    parser.add_argument("--model", required=True, help="model folder (model.json + weights)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available")
    parser.add_argument("-o", "--output", default="out/predict", help="output folder")
    parser.add_argument("--format", default=".nii.gz", choices=_FORMATS, help="output format")
    parser.add_argument("--temperature", type=float, default=None,
                        help="softmax temperature, > 0 (default: the model card's)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default: the model card's, "
                             "0.25 unless the card says otherwise)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per network call")
    parser.add_argument("--no-maps", action="store_true", help="skip prototype maps")
    parser.add_argument("--form", default="auto", choices=["auto", "full", "compact"],
                        help="full: float32 probabilities of every class; compact: top-k scores "
                             "(at most 16 bytes per voxel) in <stem>_prediction.npz; auto "
                             "(default): full while logits and probabilities fit in 1 GiB")
    parser.add_argument("--probs", action="store_true",
                        help="also write the probability map of a compact prediction (one "
                             "float32 component per class)")
    parser.add_argument("--save-prediction", action="store_true",
                        help="also write <stem>_prediction.npz for a full-precision prediction "
                             "(a compact one always writes it)")
    parser.add_argument("--dicom-out", default=None, metavar="DIR",
                        help="DICOM series input only: also write a DICOM SEG of the labels and a "
                             "DICOM Parametric Map of the confidence, referencing the series")
    add_overwrite_argument(parser)


def planned_files(image: str, output: str, fmt: str, dicom_out: str | None) -> list[str]:
    """Every path ``predict`` could write for ``image`` (checked before any work)."""
    stem = _stem(image)
    paths = [os.path.join(output, f"{stem}_{key}{fmt}") for key in MAP_KEYS]
    paths.append(os.path.join(output, f"{stem}_prediction.json"))
    paths.append(os.path.join(output, f"{stem}_{PREDICTION_FILE}"))
    if dicom_out:
        paths += [os.path.join(dicom_out, f"{stem}_seg.dcm"),
                  os.path.join(dicom_out, f"{stem}_confidence.dcm")]
    return paths


def _stem(path: str) -> str:
    from CalibSegLib.io import image_suffix

    name = os.path.basename(os.path.normpath(path))
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


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
    from CalibSegLib.inference import save_prediction
    from CalibSegLib.io import write_image

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
    from CalibSegLib.dicom import read_series_datasets, write_confidence_map, write_segmentation

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


def check(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model is loaded (no torch import)."""
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import refuse_overwrite

    _checks.input_image(args.image)
    if args.dicom_out and not os.path.isdir(args.image):
        raise CalibSegError(f"--dicom-out needs a DICOM series folder as input; {args.image} is a "
                            "file. Drop --dicom-out or pass the series folder.")
    if args.temperature is not None and not args.temperature > 0:
        raise CalibSegError(f"--temperature {args.temperature:g}: give a temperature > 0.")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise CalibSegError(f"--overlap {args.overlap:g}: give a fraction in [0, 1).")
    if args.sw_batch_size < 1:
        raise CalibSegError("--sw-batch-size must be at least 1.")
    _checks.model_card(args.model)
    refuse_overwrite(planned_files(args.image, args.output, args.format, args.dicom_out),
                     args.overwrite)


def run(args: argparse.Namespace) -> int:
    from CalibSegLib.io import read_image

    check(args)
    quiet = getattr(args, "quiet", False)
    image, affine = read_image(args.image)
    _checks.warn_if_label_image(NAME, image, args.image)

    from CalibSegLib.inference import predict, resolve_device
    from CalibSegLib.models import load_model

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, desc="predict", unit="%", file=sys.stderr,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction: float, message: str) -> None:
        assert bar is not None  # passed only with a bar
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        prediction = predict(image, affine, model, device=str(device),
                             progress=progress if bar else None, overlap=args.overlap,
                             sw_batch_size=args.sw_batch_size, maps=not args.no_maps,
                             temperature=args.temperature, form=args.form)
    finally:
        if bar is not None:
            bar.close()
    written = write_prediction(prediction, args.output, _stem(args.image), args.format,
                               probs=True if args.probs else None,
                               save=True if args.save_prediction else None)
    if args.dicom_out:
        written += write_dicom(prediction, args.image, args.dicom_out, _stem(args.image))
    if not quiet:
        info = prediction.info
        print(f"{model.name} {model.version} on {info.get('device')}: "
              f"{prediction.shape} voxels, {info.get('windows')} windows, "
              f"{info.get('seconds', 0):.1f} s, temperature {prediction.temperature:g}, "
              f"{info.get('form', 'full')} form")
        for path in written:
            print(f"wrote {path}")
    return 0
