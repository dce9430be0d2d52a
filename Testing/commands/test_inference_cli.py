"""The predict and import-model commands write readable files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from CalibSegLib.cli import main
from CalibSegLib.io import read_image, write_image
from CalibSegLib.models.testing import tiny_model


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, mni_case_4mm):
    path = str(tmp_path_factory.mktemp("img") / "case.nrrd")
    write_image(path, mni_case_4mm.image, mni_case_4mm.affine)
    return path


@pytest.mark.parametrize("head,fmt", [("prototype", ".nii.gz"), ("linear", ".nrrd")])
def test_predict_cli_writes_readable_files(tmp_path, image_file, mni_case_4mm, head, fmt, capsys):
    model = tiny_model(str(tmp_path / "model"), head=head)
    out = tmp_path / "out"
    code = main(["predict", image_file, "--model", model, "--device", "cpu", "-o", str(out),
                 "--format", fmt, "--temperature", "1.5"])
    assert code == 0
    stderr = capsys.readouterr().err
    assert "predict" in stderr  # progress bar
    meta = json.loads((out / "case_prediction.json").read_text())
    assert meta["temperature"] == 1.5 and meta["class_names"][0] == "background"
    expected = {"seg", "probs", "confidence", "entropy"}
    if head == "prototype":
        expected |= {"top_similarity", "nearest_prototype", "prototype_contribution"}
    assert {f[len("case_"):-len(fmt)] for f in meta["files"]} == expected
    assert sorted(os.listdir(out)) == sorted(meta["files"] + ["case_prediction.json"])
    seg, affine = read_image(str(out / f"case_seg{fmt}"))
    assert seg.shape == mni_case_4mm.image.shape and seg.max() <= 2
    np.testing.assert_allclose(affine, mni_case_4mm.affine, atol=1e-5)
    conf, _ = read_image(str(out / f"case_confidence{fmt}"))
    assert conf.dtype == np.float32 and conf.min() >= 0.3 and conf.max() <= 1.0


def test_predict_cli_quiet_and_errors(tmp_path, image_file, capsys):
    model = tiny_model(str(tmp_path / "model"))
    assert main(["-q", "predict", image_file, "--model", model, "--device", "cpu",
                 "-o", str(tmp_path / "o"), "--no-maps"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert not any("similarity" in n for n in os.listdir(tmp_path / "o"))
    assert main(["predict", image_file, "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_import_model_cli(tmp_path, image_file, capsys):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    path = str(tmp_path / "net.ts")
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)), path)
    out = str(tmp_path / "imported")
    assert main(["import-model", path, "-o", out, "--classes", "bg,organ",
                 "--patch-size", "16", "16", "16", "--spacing", "1", "1", "2"]) == 0
    assert "review" in capsys.readouterr().out
    card = json.loads(open(os.path.join(out, "model.json")).read())
    assert card["spacing_mm"] == [1.0, 1.0, 2.0]
    assert card["network"]["architecture"] == "torchscript"
    assert main(["import-model", path, "-o", out]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    small = str(tmp_path / "small.nii.gz")
    write_image(small, np.random.default_rng(0).normal(size=(12, 20, 16)).astype(np.float32),
                np.diag([1.0, 1.0, 2.0, 1.0]))
    pred = str(tmp_path / "pred")
    assert main(["-q", "predict", small, "--model", out, "--device", "cpu", "-o", pred]) == 0
    seg, _ = read_image(os.path.join(pred, "small_seg.nii.gz"))
    assert seg.shape == (12, 20, 16) and seg.max() <= 1
