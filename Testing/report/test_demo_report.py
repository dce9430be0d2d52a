"""The main job: the demo writes a self-contained report whose numbers are the library's."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from CalibSegLib.workflows.demo import DEMO_MODELS, models_folder


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from CalibSegLib.workflows.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(str(out), shift_seeds=(1001,), faithfulness=False)
    return out, summary


def test_demo_models_are_shipped():
    for name in DEMO_MODELS:
        folder = os.path.join(models_folder(), name)
        assert os.path.exists(os.path.join(folder, "model.json"))
        assert os.path.exists(os.path.join(folder, "model.safetensors"))


def test_report_is_self_contained_and_complete(demo_run):
    out, summary = demo_run
    html = open(summary["report"], encoding="utf-8").read()
    # images embedded, nothing fetched from elsewhere
    assert html.count("data:image/png;base64,") >= 8
    assert not re.search(r"""src=["']https?://""", html)
    for needle in ("Model cards", "Metrics", "Reliability diagrams", "Dataset reliability",
                   "Overlays", "Explanation", "this looks like that", "Limitations",
                   "Average Calibration Error", *DEMO_MODELS):
        assert needle.lower() in html.lower(), needle
    leftovers = [p for p in os.listdir(out) if p.startswith(".calibseg-")]
    assert leftovers == []


def test_reported_numbers_equal_the_library(demo_run):
    from CalibSegLib.calibration import ReliabilityStats
    from CalibSegLib.data import sample_case
    from CalibSegLib.inference import apply_temperature, predict
    from CalibSegLib.models import load_model

    out, summary = demo_run
    saved = json.load(open(os.path.join(out, "metrics.json"), encoding="utf-8"))
    assert saved["cases"] == ["mni-t1", "mni-t1-shift1001"]
    model = load_model(os.path.join(models_folder(), DEMO_MODELS[0]))
    stats = None
    for case in (sample_case("mni-t1", 2.0), sample_case("mni-t1", 2.0, shift_seed=1001)):
        pred = apply_temperature(predict(case.image, case.affine, model, device="cpu"), 1.0)
        s = ReliabilityStats.from_probs(pred.probs, case.labels, 20, image_id=case.name,
                                        reference_probs=case.reference_probs)
        stats = s if stats is None else stats.merge(s)
    expected = stats.metrics("macro").to_dict()
    got = saved["models"][model.name]["T=1"]
    for key in ("mean_dice", "marginal_ace", "marginal_ece", "ece", "soft_marginal_ace"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    # temperature scaling with the card's T changes calibration, not the segmentation
    assert saved["models"][model.name]["fitted"]["mean_dice"] == pytest.approx(
        got["mean_dice"], abs=1e-12)
    assert saved["models"][model.name]["fitted"]["temperature"] == pytest.approx(
        model.temperature)


def test_demo_writes_readable_maps(demo_run):
    from CalibSegLib.io import read_image

    out, summary = demo_run
    name = f"mni-t1-shift1001_{DEMO_MODELS[0]}_confidence.nii.gz"
    confidence, affine = read_image(os.path.join(out, name))
    assert confidence.shape == (94, 116, 98)
    assert float(confidence.min()) >= 0.3 and float(confidence.max()) <= 1.0 + 1e-6
    np.testing.assert_allclose(np.diag(affine)[:3], 2.0)


def test_demo_command_prints_key_numbers(tmp_path, capsys):
    from CalibSegLib.cli import main

    code = main(["-q", "demo", "-o", str(tmp_path), "--shift-seeds", "1002",
                 "--models", os.path.join(models_folder(), DEMO_MODELS[1]),
                 "--no-faithfulness"])
    text = capsys.readouterr().out
    assert code == 0
    assert "marginal ACE" in text and "report:" in text
    assert os.path.exists(tmp_path / "report.html")


def test_report_text_matches_the_run(tmp_path, mni_case):
    """No soft reference and no faithfulness: the report says neither was there."""
    import dataclasses

    from CalibSegLib.workflows.report import run_report

    case = dataclasses.replace(mni_case, reference_probs=None)
    messages = []
    summary = run_report([os.path.join(models_folder(), DEMO_MODELS[1])], [case],
                         str(tmp_path), faithfulness=False,
                         progress=lambda f, m: messages.append(m))
    html = open(summary["report"], encoding="utf-8").read()
    assert "soft reference" not in html.lower() and "soft marginal" not in html.lower()
    assert "Faithfulness was not measured" in html
    assert not any("faithfulness" in m for m in messages)
    # the bin rule is stated next to the numbers and diagrams it changes
    assert html.count("fewer than 100 voxels") >= 2
    # signed prototype evidence: for, then against, ranks in order of magnitude per side
    rows = re.findall(r"<tr><td>(for|against)</td><td>(\d+)</td><td>\d+</td><td>[^<]*</td>"
                      r"<td>([+-][0-9.]+)</td>", html)
    assert rows and rows[0][0] == "for"
    for side in ("for", "against"):
        mine = [(int(rank), float(share)) for s, rank, share in rows if s == side]
        assert [r for r, _ in mine] == list(range(1, len(mine) + 1))
        assert all((v > 0) == (side == "for") for _, v in mine)
        assert [abs(v) for _, v in mine] == sorted((abs(v) for _, v in mine), reverse=True)
