"""The command line with compact predictions: predict writes the prediction file, evaluate,
compare and calibrate read it and give the numbers of the full-precision path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from CalibSegLib.cli import main
from CalibSegLib.inference import load_prediction
from CalibSegLib.io import write_image
from CalibSegLib.models.testing import tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mni_case_4mm):
    root = tmp_path_factory.mktemp("compact-cli")
    cohort = root / "cohort"
    cohort.mkdir()
    image = str(cohort / "mni_image.nii.gz")
    labels = str(cohort / "mni_labels.nii.gz")
    write_image(image, mni_case_4mm.image, mni_case_4mm.affine)
    write_image(labels, mni_case_4mm.labels.astype(np.uint8), mni_case_4mm.affine)
    model = tiny_model(str(root / "model"), head="linear", seed=3)
    full, compact = root / "full", root / "compact"
    assert main(["-q", "predict", image, "--model", model, "--device", "cpu", "-o", str(full),
                 "--form", "full", "--save-prediction"]) == 0
    assert main(["-q", "predict", image, "--model", model, "--device", "cpu", "-o",
                 str(compact), "--form", "compact"]) == 0
    return {"root": root, "cohort": cohort, "image": image, "labels": labels, "model": model,
            "full": full, "compact": compact}


def test_predict_writes_the_prediction_file_of_a_compact_prediction(setup, mni_case_4mm):
    meta = json.loads((setup["compact"] / "mni_image_prediction.json").read_text())
    assert meta["form"] == "compact"
    assert sorted(meta["files"]) == sorted(
        f"mni_image_{k}" for k in ("seg.nii.gz", "confidence.nii.gz", "entropy.nii.gz",
                                   "prediction.npz"))
    saved = load_prediction(str(setup["compact"] / "mni_image_prediction.npz"))
    assert saved.is_compact and saved.shape == mni_case_4mm.image.shape
    np.testing.assert_allclose(saved.affine, mni_case_4mm.affine, atol=1e-6)
    full = load_prediction(str(setup["full"] / "mni_image_prediction.npz"))
    assert not full.is_compact
    np.testing.assert_array_equal(saved.labels, full.labels)
    full_meta = json.loads((setup["full"] / "mni_image_prediction.json").read_text())
    assert full_meta["form"] == "full" and "mni_image_probs.nii.gz" in full_meta["files"]


def test_predict_probs_on_request(setup):
    out = setup["root"] / "with-probs"
    assert main(["-q", "predict", setup["image"], "--model", setup["model"], "--device", "cpu",
                 "-o", str(out), "--form", "compact", "--probs"]) == 0
    assert {"mni_image_probs.nii.gz", "mni_image_prediction.npz"} <= set(os.listdir(out))


def _evaluate(path: str, labels: str, capsys) -> dict:
    assert main(["evaluate", "--probs", path, "--reference", labels, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_reads_either_format(setup, capsys):
    from_nifti = _evaluate(str(setup["full"] / "mni_image_probs.nii.gz"), setup["labels"], capsys)
    from_full = _evaluate(str(setup["full"] / "mni_image_prediction.npz"), setup["labels"],
                          capsys)
    from_compact = _evaluate(str(setup["compact"] / "mni_image_prediction.npz"),
                             setup["labels"], capsys)
    for name in ("ece", "ace", "marginal_ece", "marginal_ace", "nll", "brier"):
        assert from_full[name] == pytest.approx(from_nifti[name], abs=1e-6), name
        assert from_compact[name] == pytest.approx(from_nifti[name], abs=1e-3), name
    assert from_compact["dice"] == from_nifti["dice"]
    assert list(from_compact["per_class"]) == ["background", "class 1", "class 2"]


def test_compare_takes_a_saved_prediction(setup, capsys):
    out = setup["root"] / "cmp"
    assert main(["compare", setup["image"], "--model", setup["model"], "--model",
                 str(setup["compact"] / "mni_image_prediction.npz"), "--reference",
                 setup["labels"], "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agreement"]["voxels_same_label"] == 1.0
    a, b = result["models"].values()
    assert b["form"] == "compact"
    assert b["metrics"]["ece"] == pytest.approx(a["metrics"]["ece"], abs=1e-3)
    assert b["metrics"]["mean_dice"] == a["metrics"]["mean_dice"]


def test_calibrate_from_saved_predictions(setup, capsys):
    plain = setup["root"] / "cal-plain"
    saved = setup["root"] / "cal-saved"
    assert main(["calibrate", "--model", setup["model"], "--cohort", str(setup["cohort"]),
                 "-o", str(plain), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--model", setup["model"], "--cohort", str(setup["cohort"]),
                 "-o", str(saved), "--device", "cpu", "--predictions",
                 str(setup["compact"])]) == 0
    assert "1 from saved predictions" in capsys.readouterr().out
    t_plain = json.loads((plain / "model.json").read_text())["temperature"]
    t_saved = json.loads((saved / "model.json").read_text())["temperature"]
    assert t_saved == pytest.approx(t_plain, rel=2e-3)
    assert main(["calibrate", "--model", setup["model"], "--cohort", str(setup["cohort"]),
                 "-o", str(setup["root"] / "x"), "--predictions",
                 str(setup["root"] / "missing")]) == 2
