#!/usr/bin/env python
"""Make the extension's screenshots headless, from CalibSeg's MRML logic.

The slice views are composited by ``vtkMRMLSliceLogic`` exactly as Slicer blends
its layers (background scan, foreground overlay with its colour table and
opacity, label layer); the reliability diagram panel is drawn with matplotlib
from the same plot table nodes the Slicer plot view shows.

Usage::

    .venv/bin/python scripts/make_screenshots.py [--model A_DIR [--model B_DIR]] [-o DIR]

Without ``--model`` the demo models in ``Resources/Models/`` are used when there
are two; otherwise two *surrogate* models made from the template's own tissue
maps (sharpened, blurred and perturbed differently, so that one is over- and
one under-confident) stand in for trained models.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "CalibSeg"))
sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")

VIEW = 300  # pixels per slice view


def surrogate_prediction(case, sharpness: float, noise: float, seed: int, name: str):
    """A Prediction whose logits come from the soft reference (a stand-in for a model)."""
    import torch
    from scipy.ndimage import gaussian_filter

    from CalibSegLib.inference import Prediction, probability_maps

    rng = np.random.default_rng(seed)
    ref = np.clip(case.reference_probs.astype(np.float64), 1e-4, 1.0)
    logits = np.log(ref) * sharpness
    logits += gaussian_filter(rng.normal(0.0, noise, logits.shape), sigma=(0, 1.5, 1.5, 1.5))
    logits = logits.astype(np.float32)
    probs, confidence, entropy = probability_maps(torch.from_numpy(logits), 1.0)
    return Prediction(
        logits=logits, probs=probs.numpy(), labels=logits.argmax(0).astype(np.uint8),
        confidence=confidence.numpy(), entropy=entropy.numpy(), affine=case.affine,
        class_names=tuple(case.class_names), temperature=1.0, model_name=name,
        class_colors=tuple(case.class_colors),
    )


def surrogate_model(name, case):
    """A library ``Model`` named ``name`` with the case's classes (its network is never run)."""
    import torch

    from CalibSegLib.models import Model, new_card

    card = new_card(name, case.class_names, class_colors=case.class_colors, head="linear")
    return Model(card=card, network=torch.nn.Identity())


def slice_logic(scene, name, orientation):
    import slicer

    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    node = logic.AddSliceNode(name)
    node.SetOrientation(orientation)
    node.SetDimensions(VIEW, VIEW, 1)
    logic._keep = app
    return logic


def render(logic) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    logic.FitSliceToAll()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    w, h, _ = image.GetDimensions()
    rgba = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.flipud(rgba[..., :3]).astype(np.uint8)  # VTK rows go bottom-up


def diagram_panel(scene, logic, size) -> np.ndarray:
    import matplotlib.pyplot as plt
    from CalibSegSlicer import plots

    fig, ax = plt.subplots(figsize=(size[1] / 100, size[0] / 100), dpi=100)
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    values = plots.readMetricsTable(scene.GetNodeByID(logic.metricsTableID))
    for slot, result in logic.results.items():
        table = scene.GetNodeByID(result.nodeIDs["reliability"])
        color = plots.SERIES_COLORS[slot]
        centre = plots.readColumn(table, plots.BIN_CENTRE)
        ax.bar(centre, plots.readColumn(table, plots.FRACTION), width=0.045, color=color,
               alpha=0.3)
        m = values[logic.columnName(slot)]
        confidence = plots.readColumn(table, plots.CONFIDENCE)
        ax.plot(confidence, plots.readColumn(table, plots.OBSERVED),
                "o-", color=color, ms=3,
                label=f"{slot}: {result.name}  ACE {m['ACE']:.3f}  ECE {m['ECE']:.3f}")
        light = plots.readColumn(table, plots.OBSERVED_LIGHT)
        counts = plots.readColumn(table, plots.COUNT)
        shown = ~np.isnan(light)
        ax.plot(confidence[shown], light[shown], "o", color=plots.LIGHT_COLOR, ms=3)
        for x, y, n in zip(confidence[shown], light[shown], counts[shown]):
            ax.annotate(f"n={int(n)}", (x, y), fontsize=5, color="0.45",
                        xytext=(2, -7), textcoords="offset points")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="observed frequency",
           title="Reliability diagram")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    from PIL import Image

    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def save(path, panels, gap=4):
    from PIL import Image

    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width, 3), 24, np.uint8)
    x = 0
    for p in panels:
        canvas[: p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    image = Image.fromarray(canvas).quantize(colors=192, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="model folder (up to 2)")
    parser.add_argument("-o", "--output", default=os.path.join(ROOT, "Resources", "Screenshots"))
    parser.add_argument("--resolution", type=float, default=2.0)
    args = parser.parse_args(argv)

    import slicer
    from CalibSegSlicer import arrays, layouts
    from CalibSegSlicer.catalog import loadModel
    from CalibSegSlicer.logic import CalibSegLogic

    from CalibSegLib.data import sample_case

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    case = sample_case("mni-t1", resolution_mm=args.resolution)
    views = {name: slice_logic(scene, name, o) for name, o in
             (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"),
              (layouts.COMPARE_VIEW, "Axial"))}
    volume = arrays.newVolumeNode(case.image, case.affine, "mni-t1")
    scene.AddNode(volume)
    volume.CreateDefaultDisplayNodes()
    reference = arrays.newVolumeNode(case.labels.astype(np.int16), case.affine, "reference",
                                     "vtkMRMLLabelMapVolumeNode")
    scene.AddNode(reference)
    reference.CreateDefaultDisplayNodes()

    logic = CalibSegLogic(scene)
    folders = args.model
    demo = os.path.join(ROOT, "Resources", "Models")
    if not folders and os.path.isdir(demo):
        found = sorted(os.path.join(demo, d) for d in os.listdir(demo)
                       if os.path.isfile(os.path.join(demo, d, "model.json")))
        folders = found[:2] if len(found) >= 2 else []
    if folders:
        logic.run(volume, [loadModel(folder) for folder in folders], device="auto")
    else:
        print("no trained models given: using surrogate models made from the tissue maps")
        for slot, (sharp, noise, seed, name) in zip("AB", ((3.0, 1.2, 1, "surrogate sharp"),
                                                           (0.9, 0.4, 2, "surrogate soft"))):
            pred = surrogate_prediction(case, sharp, noise, seed, name)
            logic.addPrediction(volume, surrogate_model(name, case), pred, slot=slot)
    have_diagram = True
    try:
        logic.setReference(reference)
    except ImportError:
        have_diagram = False
        print("CalibSegLib.calibration not available: screenshots without the diagram")
    os.makedirs(args.output, exist_ok=True)

    logic.showLayout(compare=False)
    logic.showOverlay("confidence", 0.7)
    shots = [render(views[n]) for n in ("Red", "Yellow", "Green")]
    panels = shots + ([diagram_panel(scene, logic, (VIEW, VIEW + 60))] if have_diagram else [])
    save(os.path.join(args.output, "overview.png"), panels)

    logic.showOverlay("entropy", 0.75)
    entropy = render(views["Red"])
    logic.showOverlay("confidence", 0.75)
    confidence = render(views["Red"])
    logic.showOverlay("none")
    plain = render(views["Red"])
    save(os.path.join(args.output, "confidence.png"), [plain, confidence, entropy])

    logic.showLayout(compare=True)
    logic.showOverlay("confidence", 0.7)
    panels = [render(views["Red"]), render(views[layouts.COMPARE_VIEW])]
    if have_diagram:
        panels.append(diagram_panel(scene, logic, (VIEW, VIEW + 60)))
    save(os.path.join(args.output, "compare.png"), panels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
