"""Explanations of real CalibSeg model folders (tiny untrained models) and the command."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from CalibSegLib.cli import main
from CalibSegLib.explain.api import check_contributions, explain


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from CalibSegLib.models import load_model
    from CalibSegLib.models.testing import tiny_model

    root = tmp_path_factory.mktemp("models")
    names = ["background", "grey matter", "white matter"]
    folders = {
        "proto": tiny_model(str(root / "proto"), head="prototype", class_names=names),
        "linear": tiny_model(str(root / "linear"), head="linear", class_names=names),
        "proto2mm": tiny_model(str(root / "proto2mm"), head="prototype", class_names=names,
                               spacing_mm=(2.0, 2.0, 2.0)),
    }
    return {k: load_model(v) for k, v in folders.items()} | {"folders": folders}


def test_prototype_head_contributions_sum_to_logits(models, mni_case_4mm):
    assert check_contributions(mni_case_4mm.image, models["proto"]) < 1e-3


def test_prototype_explanation_of_a_model(models, mni_case_4mm):
    case = mni_case_4mm
    weights = {k: v.clone() for k, v in models["proto"].network.state_dict().items()}
    e = explain(case.image, case.affine, models["proto"], "prototype", "grey matter",
                roi=case.labels == 1)
    assert e.map.shape == case.image.shape and e.class_name == "grey matter"
    assert len(e.prototypes) == 6 and e.prototypes[0]["rank"] == 1
    assert "region of interest" in e.region
    for k, v in models["proto"].network.state_dict().items():
        assert np.array_equal(v.numpy(), weights[k].numpy())


def test_segmenter_computes_what_predict_computes(models, mni_case_4mm):
    from CalibSegLib.explain.adapt import as_segmenter
    from CalibSegLib.explain.segmenter import predict_logits
    from CalibSegLib.inference import predict

    case = mni_case_4mm
    crop, crop_affine, _ = _crop(case)
    # Several windows on the model's own grid, and a resampled grid (4 mm image, 2 mm model).
    for key, image, affine in (("proto", case.image, case.affine),
                               ("proto2mm", crop, crop_affine)):
        expected = predict(image, affine, models[key], device="cpu").logits
        seg = as_segmenter(models[key], affine=affine)
        assert seg.sliding
        np.testing.assert_allclose(predict_logits(seg, image).numpy(), expected, atol=1e-4)


def _crop(case):
    """A 20 x 24 x 22 block from the middle of the case, with its own affine."""
    box = (slice(14, 34), slice(17, 41), slice(14, 36))
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ [14, 17, 14] + case.affine[:3, 3]
    return case.image[box].copy(), affine, case.labels[box].copy()


def test_model_at_other_spacing_is_resampled(models, mni_case_4mm):
    image, affine, labels = _crop(mni_case_4mm)
    e = explain(image, affine, models["proto2mm"], "gradcam", 1, roi=labels == 1)
    assert e.map.shape == image.shape
    # 4 mm image, 2 mm model: the network runs on a twice finer grid (39 x 47 x 43, padded
    # to 40 x 48 x 44); the first decoder stage is at half of it, which has the image's
    # shape but not its grid
    assert e.layer == "backbone.model.1.submodule.2"
    assert e.upsampling == "trilinear from feature grid (20, 24, 22) to image grid (20, 24, 22)"


def test_linear_model_has_no_prototypes(models, mni_case_4mm):
    from CalibSegLib.errors import CalibSegError

    with pytest.raises(CalibSegError, match="linear head"):
        explain(mni_case_4mm.image, mni_case_4mm.affine, models["linear"], "prototype")


def test_explain_command_writes_maps_and_scores(models, mni_case_4mm, tmp_path, capsys):
    from CalibSegLib.io import read_image, write_image

    crop, affine, crop_labels = _crop(mni_case_4mm)
    image = write_image(str(tmp_path / "t1.nii.gz"), crop, affine)
    labels = write_image(str(tmp_path / "labels.nrrd"), crop_labels, affine)
    out = tmp_path / "out"
    rc = main(["explain", image, "--model", models["folders"]["proto"], "--method", "prototype",
               "--class", "1", "--faithfulness", "--steps", "3", "--blocks", "4",
               "--reference", labels, "--roi", labels, "--format", ".nrrd", "-o", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "%" in captured.err
    meta = json.loads((out / "t1_prototype.json").read_text())
    f = meta["faithfulness"]
    assert isinstance(f["beats_random"], bool) and f["baseline"]["kind"] == "blur"
    assert 0.0 <= f["plausibility"]["activation_precision"] <= 1.0
    assert meta["prototypes"] and meta["files"]["nearest_prototype"]
    array, affine = read_image(str(out / "t1_prototype.nrrd"))
    assert array.shape == crop.shape and np.allclose(affine, read_image(image)[1])
    assert not [p for p in os.listdir(out) if p.startswith(".calibseg-")]
    rc = main(["explain", image, "--model", models["folders"]["proto"], "--class", "liver",
               "-q", "-o", str(out)])
    assert rc == 2 and "Unknown class" in capsys.readouterr().err
