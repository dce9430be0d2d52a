"""One entry point for every explanation method, and saving the result."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain.adapt import as_segmenter
from CalibSegLib.explain.faithfulness import check_options, evaluate_faithfulness, random_map
from CalibSegLib.explain.posthoc import gradcam_map, occlusion_map
from CalibSegLib.explain.prototype import (
    contribution_maps,
    prototype_attribution,
    prototype_maps,
    rank_prototypes,
)
from CalibSegLib.explain.region import region_mask
from CalibSegLib.explain.segmenter import predict_logits
from CalibSegLib.explain.types import Explanation
from CalibSegLib.files import write_json
from CalibSegLib.io import write_image
from CalibSegLib.progress import CancelCallback, ProgressCallback, report, scaled

#: The methods :func:`explain` computes (``"random"`` maps come from :func:`random_explanation`).
EXPLAIN_METHODS = ("prototype", "gradcam", "gradcampp", "occlusion")


def resolve_class(value: int | str | None, class_names: Sequence[str], labels: np.ndarray | None
                  = None) -> int:
    """A class index from a name or index; by default the largest predicted foreground class.

    ``labels`` (optional) is the predicted label map, an integer array of shape (Z, Y, X).
    """
    n = len(class_names)
    if value is None:
        if labels is None:
            return 1 if n > 1 else 0
        counts = np.bincount(np.asarray(labels).ravel(), minlength=n)[:n]
        if n > 1 and counts[1:].any():
            return int(1 + np.argmax(counts[1:]))
        return int(np.argmax(counts))
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < n:
            return index
    else:
        lowered = [c.lower() for c in class_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    raise CalibSegError(
        f"Unknown class {value!r}; this model knows "
        + ", ".join(f"{i} {name!r}" for i, name in enumerate(class_names)) + "."
    )


def _class_names(model, num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    names = getattr(model, "class_names", None)
    if names:
        return list(names)
    return [f"class {i}" for i in range(num_classes)]


def explain(
    image: np.ndarray,
    affine: np.ndarray,
    model,
    method: str = "gradcam",
    target_class: int | str | None = None,
    roi: np.ndarray | None = None,
    *,
    layer: str | None = None,
    class_names: Sequence[str] | None = None,
    faithfulness: bool = False,
    faithfulness_options: dict | None = None,
    reference: np.ndarray | None = None,
    occlusion_options: dict | None = None,
    top_prototypes: int | None = 10,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Explanation:
    """Explain a model's segmentation of one image, optionally with faithfulness scores.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Z, Y, X)`` image (never modified).
    affine : numpy.ndarray
        ``(4, 4)`` voxel-to-RAS matrix; the map has the same geometry.
    model : Model, Segmenter or torch.nn.Module
        A loaded CalibSeg model, or a network mapping ``(B, 1, Z, Y, X)`` to logits.
    method : {"prototype", "gradcam", "gradcampp", "occlusion"}
    target_class : int or str, optional
        Class index or name (default: the largest predicted foreground class).
    roi : numpy.ndarray, optional
        ``(Z, Y, X)`` region to explain (default: the predicted segment of the class).
    layer : str, optional
        Grad-CAM layer of the network (default: :func:`default_layer`, the first decoder
        stage).
    faithfulness : bool
        Also measure faithfulness (see :func:`evaluate_faithfulness`).
    faithfulness_options : dict, optional
        Keyword arguments for :func:`evaluate_faithfulness` (steps, baseline, seed, …).
    reference : numpy.ndarray, optional
        ``(Z, Y, X)`` reference labels for the plausibility score.
    occlusion_options : dict, optional
        Keyword arguments for :func:`~CalibSegLib.explain.posthoc.occlusion_map`.
    top_prototypes : int, optional
        Length of the prototype ranking.

    Returns
    -------
    Explanation
    """
    if method not in EXPLAIN_METHODS:
        raise CalibSegError(f"Unknown method {method!r}; use {', '.join(EXPLAIN_METHODS)}.")
    if faithfulness:
        check_options(**(faithfulness_options or {}))
    image = np.asarray(image)
    if image.ndim != 3:
        raise CalibSegError(f"Expected a 3D image (Z, Y, X); got shape {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise CalibSegError("The image contains NaN or infinite values; fix or mask them first.")
    if reference is not None and np.shape(reference) != image.shape:
        raise CalibSegError(
            f"The reference segmentation has shape {np.shape(reference)} but the image has "
            f"{image.shape}; resample it onto the image grid first."
        )
    image = image.astype(np.float32, copy=False)
    segmenter = as_segmenter(model, affine=affine).to(device).eval()
    work = (0.0, 0.5) if faithfulness else (0.0, 1.0)
    report(progress, 0.0, "predicting")
    protos = None
    if method == "prototype":
        protos = prototype_maps(segmenter, image, device)
        logits = protos["logits"]
    else:
        logits = predict_logits(segmenter, image, device).double().cpu().numpy()
    labels = logits.argmax(0)
    names = _class_names(model, logits.shape[0], class_names)
    c = resolve_class(target_class, names, labels)
    region, description = region_mask(labels, c, roi, f"'{names[c]}' (class {c})")
    report(scaled(progress, *work), 0.1, f"explaining with {method}")
    extras: dict[str, np.ndarray] = {}
    ranking = None
    layer_used: str | None = None
    if method == "prototype":
        assert protos is not None
        attribution = prototype_attribution(protos, c)
        ranking = rank_prototypes(
            protos["similarity"], protos["weight"], c, region, protos["prototype_class"],
            catalogue=_catalogue(model), class_names=names, model_folder=_folder(model),
            top=top_prototypes)
        extras["nearest_prototype"] = protos["nearest"].astype(np.float32)
        extras["nearest_similarity"] = protos["nearest_similarity"].astype(np.float32)
        if ranking:
            best = ranking[0]["index"]
            extras["top_prototype_contribution"] = (
                protos["weight"][c, best] * protos["similarity"][best]).astype(np.float32)
        info = {"upsampling": "none", "score": "own-class prototype evidence sum_j w_cj sim_j",
                "num_prototypes": int(protos["similarity"].shape[0])}
    elif method in ("gradcam", "gradcampp"):
        attribution, info = gradcam_map(segmenter, image, c, region, layer,
                                        plusplus=method == "gradcampp", device=device)
        layer_used = str(info["layer"])
    else:  # occlusion
        attribution, info = occlusion_map(segmenter, image, c, region, device=device,
                                          progress=scaled(progress, *work), cancel=cancel,
                                          **(occlusion_options or {}))
    details = {k: v for k, v in info.items() if k not in ("layer", "upsampling")}
    if attribution.size and float(attribution.max()) == float(attribution.min()):
        details["constant_map"] = True
        details["note"] = (
            "The map is constant, so it ranks no voxel above another"
            + (f" (Grad-CAM's ReLU removed every weighted activation at layer {layer_used!r};"
               " try another layer)" if method in ("gradcam", "gradcampp") else "") + ".")
    explanation = Explanation(
        map=attribution, affine=affine, method=method, target_class=c, class_name=names[c],
        region=description, upsampling=str(info["upsampling"]), layer=layer_used,
        prototypes=ranking, extras=extras, details=details,
    )
    if faithfulness:
        explanation.faithfulness = evaluate_faithfulness(
            segmenter, image, explanation.map, c, region, reference=reference, device=device,
            progress=scaled(progress, 0.5, 1.0), cancel=cancel, **(faithfulness_options or {}))
    report(progress, 1.0, "done")
    return explanation


def random_explanation(explanation: Explanation, seed: int = 0,
                       smooth_sigma: float | None = None) -> Explanation:
    """A random map with the histogram of ``explanation.map`` (sanity baseline)."""
    return Explanation(
        map=random_map(explanation.map, seed, smooth_sigma), affine=explanation.affine,
        method="random", target_class=explanation.target_class,
        class_name=explanation.class_name, region=explanation.region, upsampling="none",
        details={"of": explanation.method, "seed": int(seed),
                 "smooth_sigma_voxels": smooth_sigma},
    )


def check_contributions(image: np.ndarray, model, device: str | torch.device = "cpu") -> float:
    """Largest ``|sum_j w_cj sim_j + b_c - logit_c|`` over voxels and classes (should be ~0).

    ``image`` is an array of shape (Z, Y, X); ``model`` has a prototype head.
    """
    maps = prototype_maps(as_segmenter(model).to(device).eval(), np.asarray(image), device)
    total = np.stack([contribution_maps(maps["similarity"], maps["weight"], c).sum(0)
                      for c in range(maps["weight"].shape[0])])
    if maps["bias"] is not None:
        total = total + maps["bias"][:, None, None, None]
    return float(np.abs(total - maps["logits"]).max())


def _catalogue(model):
    card = getattr(model, "card", None)
    if card is None:
        return None
    return card.get("prototypes") if isinstance(card, dict) else getattr(card, "prototypes", None)


def _folder(model) -> str | None:
    folder = getattr(model, "folder", None) or getattr(model, "path", None)
    return str(folder) if folder else None


def save_explanation(explanation: Explanation, output: str, stem: str = "explanation",
                     suffix: str = ".nii.gz", extras: bool = True) -> list[str]:
    """Write the map (and extra maps) as images and the scores as JSON, each atomically.

    Returns
    -------
    list of str
        Written paths: ``{stem}_{method}{suffix}``, extra maps, ``{stem}_{method}.json``.
    """
    os.makedirs(output, exist_ok=True)
    base = os.path.join(output, f"{stem}_{explanation.method}")
    written = [write_image(base + suffix, explanation.map, explanation.affine)]
    files = {"map": os.path.basename(written[0])}
    if extras:
        for name, array in explanation.extras.items():
            written.append(write_image(f"{base}_{name}{suffix}", array, explanation.affine))
            files[name] = os.path.basename(written[-1])
    meta = explanation.to_dict() | {"files": files}
    written.append(write_json(base + ".json", meta))
    return written
