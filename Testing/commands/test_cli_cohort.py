"""calibseg calibrate, compare and evaluate --model --cohort on a small cohort."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from CalibSegLib.cli import main
from CalibSegLib.workflows.demo import models_folder

MODEL = os.path.join(models_folder(), "dicece")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from CalibSegLib.data import sample_case
    from CalibSegLib.io import write_image

    folder = tmp_path_factory.mktemp("cohort")
    for seed in (1011, 1012):
        case = sample_case("mni-t1", 2.0, shift_seed=seed)
        write_image(str(folder / f"s{seed}_image.nii.gz"), case.image, case.affine)
        write_image(str(folder / f"s{seed}_labels.nii.gz"), case.labels, case.affine)
    return folder


def test_calibrate_writes_a_copy_and_never_touches_the_model(cohort, tmp_path):
    from CalibSegLib.cohort import fit_cohort_temperature, read_cohort
    from CalibSegLib.models import load_model

    before = open(os.path.join(MODEL, "model.json"), encoding="utf-8").read()
    out = tmp_path / "calibrated"
    assert main(["-q", "calibrate", "--model", MODEL, "--cohort", str(cohort), "-o",
                 str(out)]) == 0
    assert open(os.path.join(MODEL, "model.json"), encoding="utf-8").read() == before
    fitted = load_model(str(out)).temperature
    expected, _ = fit_cohort_temperature(load_model(MODEL), read_cohort(str(cohort)),
                                         device="cpu")
    assert fitted == pytest.approx(expected, rel=1e-9)
    assert 0.3 < fitted < 5.0
    # an existing folder is never overwritten; neither output nor --in-place is an error
    assert main(["-q", "calibrate", "--model", MODEL, "--cohort", str(cohort), "-o",
                 str(out)]) == 2
    assert main(["-q", "calibrate", "--model", MODEL, "--cohort", str(cohort)]) == 2
    assert [p for p in os.listdir(tmp_path) if p.startswith(".calibseg-")] == []


def test_evaluate_cohort_merges_cases(cohort, tmp_path, capsys):
    from CalibSegLib.calibration import ReliabilityStats

    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--model", MODEL, "--cohort", str(cohort), "--json", "-o",
                 str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    stats = ReliabilityStats.from_dict(json.load(open(out / "stats.json", encoding="utf-8")))
    assert sorted(stats.image_ids) == ["s1011", "s1012"]
    assert printed["marginal_ace"] == pytest.approx(stats.metrics().marginal_ace)
    rows = open(out / "cases.csv", encoding="utf-8").read().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case,")
    assert (out / "dataset_reliability_histogram.png").exists()


def test_compare_two_models(cohort, tmp_path, capsys):
    out = tmp_path / "cmp"
    image = str(cohort / "s1011_image.nii.gz")
    labels = str(cohort / "s1011_labels.nii.gz")
    other = os.path.join(models_folder(), "dicece-hardace")
    assert main(["-q", "compare", image, "--model", MODEL, "--model", other, "--reference",
                 labels, "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["models"]) == {"dicece", "dicece-hardace"}
    for entry in result["models"].values():
        assert 0.5 < entry["metrics"]["mean_dice"] <= 1.0
    assert 0.5 < result["agreement"]["voxels_same_label"] <= 1.0
    assert (out / "reliability.png").exists() and (out / "compare.json").exists()


def test_user_errors_are_one_line(cohort, tmp_path, capsys):
    from CalibSegLib.io import write_image

    image = str(cohort / "s1011_image.nii.gz")
    # reference on another grid
    bad = tmp_path / "bad_labels.nii.gz"
    write_image(str(bad), np.zeros((10, 10, 10), np.uint8), np.eye(4))
    assert main(["compare", image, "--model", MODEL, "--model", MODEL, "--reference", str(bad),
                 "-o", str(tmp_path / "x")]) == 2
    assert "geometry" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # missing cohort, only one model, mixed evaluate modes
    assert main(["calibrate", "--model", MODEL, "--cohort", str(tmp_path / "none"), "-o",
                 str(tmp_path / "y")]) == 2
    assert main(["compare", image, "--model", MODEL]) == 2
    assert main(["evaluate", "--model", MODEL]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_report_command(cohort, tmp_path):
    out = tmp_path / "rep"
    image = str(cohort / "s1012_image.nii.gz")
    labels = str(cohort / "s1012_labels.nii.gz")
    assert main(["-q", "report", image, "--reference", labels, "--model", MODEL, "-o", str(out),
                 "--no-faithfulness"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "dicece" in html and "Limitations" in html
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert summary["cases"] == ["s1012_image"]
    assert main(["-q", "report", image, "--reference", labels, "--model", MODEL, "--model",
                 MODEL, "--model", MODEL, "-o", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
