"""``calibseg evaluate`` and the calibration plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from CalibSegLib.calibration import (
    ReliabilityStats,
    plot_dataset_reliability_histogram,
    plot_reliability_diagram,
)
from CalibSegLib.cli import main


def _case(seed=0, c=3, shape=(6, 5, 4)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((c,) + shape) * 2
    p = np.exp(z) / np.exp(z).sum(0)
    return p.astype(np.float32), rng.integers(0, c, shape)


def _write_labels(path, labels, affine=None):
    from CalibSegLib.io import write_image

    write_image(str(path), labels.astype(np.int16), np.eye(4) if affine is None else affine)


def test_evaluate_npy_json_and_outputs(tmp_path, capsys):
    p, t = _case()
    np.save(tmp_path / "probs.npy", p)
    _write_labels(tmp_path / "ref.nii.gz", t)
    out = tmp_path / "out"
    code = main(["evaluate", "--probs", str(tmp_path / "probs.npy"), "--reference",
                 str(tmp_path / "ref.nii.gz"), "--bins", "10", "--json", "-o", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    result = json.loads(text[: text.rindex("}") + 1])
    expected = ReliabilityStats.from_probs(p, t, 10).metrics().to_dict()
    for key in ("ece", "ace", "mce_raw", "marginal_ece", "marginal_ace", "marginal_mce_raw"):
        assert result[key] == pytest.approx(expected[key], rel=1e-9)
    # 120 voxels: no bin reaches the minimum bin mass, so MCE is undefined (JSON null)
    assert result["mce"] is None and np.isnan(expected["mce"])
    assert result["n_bins"] == 10 and set(result["per_class"]) == {"class 0", "class 1",
                                                                    "class 2"}
    assert set(result["dice"]) == set(result["per_class"])
    assert sorted(os.listdir(out)) == ["metrics.json", "reliability.png", "stats.json"]
    back = ReliabilityStats.from_dict(json.loads((out / "stats.json").read_text()))
    assert np.array_equal(back.count, ReliabilityStats.from_probs(p, t, 10).count)


def test_evaluate_vector_image(tmp_path, capsys):
    from CalibSegLib.io import write_image

    p, t = _case(1)
    write_image(str(tmp_path / "probs.nrrd"), np.moveaxis(p, 0, -1), np.eye(4), vector=True)
    _write_labels(tmp_path / "ref.nrrd", t)
    assert main(["evaluate", "--probs", str(tmp_path / "probs.nrrd"), "--reference",
                 str(tmp_path / "ref.nrrd"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ace"] == pytest.approx(ReliabilityStats.from_probs(p, t).metrics().ace,
                                          rel=1e-6)


@pytest.mark.parametrize("bad", ["nan", "label", "shape", "geometry"])
def test_evaluate_rejects_bad_input_without_output(tmp_path, capsys, bad):
    p, t = _case(2)
    affine = np.eye(4)
    if bad == "nan":
        p[0, 0, 0, 0] = np.nan
    elif bad == "label":
        t[0, 0, 0] = 7
    elif bad == "shape":
        t = t[:3]
    from CalibSegLib.io import write_image

    if bad == "geometry":
        write_image(str(tmp_path / "probs.nii.gz"), np.moveaxis(p, 0, -1), affine, vector=True)
        probs = tmp_path / "probs.nii.gz"
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
    else:
        np.save(tmp_path / "probs.npy", p)
        probs = tmp_path / "probs.npy"
    _write_labels(tmp_path / "ref.nii.gz", t, affine)
    out = tmp_path / "out"
    code = main(["evaluate", "--probs", str(probs), "--reference", str(tmp_path / "ref.nii.gz"),
                 "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error" in err[0]
    assert not out.exists()


def test_reliability_diagram_plots_skip_empty_bins_and_overlay(tmp_path):
    p, t = _case(3, shape=(8, 8, 4))
    a = ReliabilityStats.from_probs(p, t)
    q = p ** 0.5
    b = ReliabilityStats.from_probs((q / q.sum(0)).astype(np.float32), t)
    fig = plot_reliability_diagram(a, path=str(tmp_path / "one.png"))
    assert (tmp_path / "one.png").stat().st_size > 0
    ax = fig.axes[0]
    heights = [r.get_height() for r in ax.patches[: int((a.reliability_diagram()["counts"]
                                                          > 0).sum())]]
    d = a.reliability_diagram()
    np.testing.assert_allclose(sorted(heights),
                               sorted(d["observed_frequency"][d["counts"] > 0]))
    assert len(heights) < a.n_bins  # empty bins were not drawn as zero-height bars
    fig2 = plot_reliability_diagram([("T=1", a), ("sharpened", b)], class_index=1,
                                    path=str(tmp_path / "two.svg"))
    labels = [line.get_label() for line in fig2.axes[0].get_lines()]
    assert any(label.startswith("T=1") for label in labels)
    assert any(label.startswith("sharpened") for label in labels)
    for line in fig2.axes[0].get_lines()[1:]:
        assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()
    assert (tmp_path / "two.svg").read_text().lstrip().startswith("<?xml")


def test_dataset_histogram_plot(tmp_path):
    stats = ReliabilityStats.merge_all(
        ReliabilityStats.from_probs(*_case(i), image_id=str(i)) for i in range(4))
    fig = plot_dataset_reliability_histogram(stats, ["bg", "a", "b"],
                                             path=str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").exists()
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert len(images) == 3
    np.testing.assert_allclose(np.ma.filled(images[1].get_array(), np.nan),
                               stats.dataset_reliability_histogram(1), equal_nan=True)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # no pyplot state
