"""Bad models and bundles end with one clear line and write nothing."""

from __future__ import annotations

import json
import os
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from CalibSegLib.cli import main
from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import ModelCard, save_model
from CalibSegLib.models.importers import import_model


class _Payload:
    """Unpickling this runs code that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


class _Bad(nn.Module):
    """A U-Net whose output is cropped, has NaN, or has the wrong channel count."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8),
                        strides=(2,), num_res_units=0)
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.fault == "crop":
            return y[:, :, 1:-1, 1:-1, 1:-1]
        if self.fault == "nan-always":
            return y * float("nan")
        if self.fault == "nan":
            return y * torch.where(x > 3.0, torch.full_like(x, float("nan")), torch.ones_like(x))
        return y


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _image(tmp_path) -> str:
    path = str(tmp_path / "case.nii.gz")
    image = np.random.default_rng(0).normal(size=(8, 12, 8)).astype(np.float32)
    image[4, 4, 4] = 10.0  # makes the "nan" network produce NaN at prediction
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _torchscript(tmp_path, fault: str) -> str:
    path = str(tmp_path / f"{fault}.ts")
    torch.jit.save(torch.jit.script(_Bad(fault).eval()), path)
    return path


@pytest.mark.parametrize("fault,message", [("crop", "spatial size"), ("nan-always", "NaN")])
def test_import_refuses_a_network_that_does_not_fit(tmp_path, capsys, fault, message):
    path = _torchscript(tmp_path, fault)
    out = tmp_path / "imported"
    assert main(["import-model", path, "-o", str(out), "--patch-size", "8", "8", "8"]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists() and not any(n.startswith(".calibseg") for n in os.listdir(tmp_path))


def _folder_with_card(tmp_path, fault: str, classes: int = 2) -> str:
    """A model folder whose card passes import checks but whose network misbehaves later."""
    names = ["background"] + [f"class {i}" for i in range(1, classes)]
    card = ModelCard({
        "format_version": 2, "name": fault, "version": "1",
        "classes": [{"name": n, "color": [0.5, 0.5, 0.5]} for n in names],
        "spacing_mm": [2.0, 2.0, 2.0], "orientation": "RAS", "axis_order": "XYZ",
        "output_kind": "logits", "preprocessing": [], "patch_size": [8, 8, 8],
        "network": {"architecture": "torchscript", "file": "model.ts"},
        "head": {"type": "linear"},
    })
    scripted = torch.jit.script(_Bad(fault).eval())
    return save_model(str(tmp_path / f"model-{fault}"), card, scripted)


@pytest.mark.parametrize("fault,classes,message", [
    ("crop", 2, "spatial size"), ("nan", 2, "NaN"), ("none", 3, "2 output channels")])
def test_prediction_refuses_output_that_does_not_fit_the_card(tmp_path, capsys, fault,
                                                              classes, message):
    folder = _folder_with_card(tmp_path, fault, classes)
    out = tmp_path / "prediction"
    code = main(["-q", "predict", _image(tmp_path), "--model", folder, "--device", "cpu",
                 "-o", str(out)])
    assert code == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def _bundle(tmp_path, transforms: list) -> str:
    folder = tmp_path / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 2, "channels": [4, 8], "strides": [2],
                        "num_res_units": 0},
        "a_min": -100,
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [8, 8, 8]},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).state_dict(),
               folder / "models" / "model.pt")
    return str(folder)


LOAD = [{"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"}]


@pytest.mark.parametrize("item,named", [
    ({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": "$-57 * 2", "a_max": 100},
     "preprocessing#transforms#2#a_min is a Python expression"),
    ({"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
     "preprocessing#transforms#2 (CropForegroundd) is not supported"),
    ({"_target_": "RandGaussianNoised", "keys": "image", "prob": 1.0},
     "preprocessing#transforms#2 (RandGaussianNoised) is not supported"),
    ({"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x * 2"},
     "preprocessing#transforms#2 (Lambdad) is not supported"),
    ({"_target_": "mypackage.transforms.Evil", "keys": "image"},
     "'mypackage.transforms.Evil' is not a MONAI transform"),
    ({"_target_": "NormalizeIntensityd", "keys": "image", "dtype": "float16"},
     "args.dtype"),
    ({"_target_": "ShiftIntensityd", "keys": "image", "offset": "%configs/x.json#offset"},
     "file macro"),
])
def test_bundle_preprocessing_outside_the_allow_list_is_named(tmp_path, capsys, item, named):
    source = _bundle(tmp_path, LOAD + [item])
    out = tmp_path / "imported"
    assert main(["import-model", source, "-o", str(out)]) == 2
    assert named in _one_line_error(capsys)
    assert not out.exists()


def test_bundle_preprocessing_references_and_neutral_items_are_read(tmp_path):
    item = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": "@a_min",
            "a_max": 100, "b_min": 0.0, "b_max": 1.0, "clip": True}
    compose = LOAD + [{"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"},
                      {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
                      {"_target_": "ScaleIntensityd", "keys": "label"}, item]
    card = import_model(_bundle(tmp_path, compose), str(tmp_path / "m"))
    assert card.preprocessing == [{"transform": "ScaleIntensityRange", "args": {
        "a_min": -100, "a_max": 100, "b_min": 0.0, "b_max": 1.0, "clip": True}}]
    assert card.orientation == "LPS"
    notes = " ".join(card.review_notes)
    assert "EnsureTyped" in notes and "not for the 'image' key" in notes
    assert "spacing_mm 1, 1, 1 is a guess" in notes


def test_malicious_pickle_never_runs_and_nothing_is_written(tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    source = _bundle(tmp_path, LOAD)
    with open(os.path.join(source, "models", "model.pt"), "wb") as fh:
        pickle.dump({"weight": _Payload(str(marker))}, fh)
    out = tmp_path / "imported"
    assert main(["import-model", source, "-o", str(out)]) == 2
    assert "refused to load" in _one_line_error(capsys)
    assert not marker.exists() and not out.exists()
    with pytest.raises(CalibSegError, match="refused to load"):
        import_model(source, str(out))
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(str(marker))))  # the payload is real
    assert marker.exists()


def test_import_reports_progress_and_cancels_without_writing(tmp_path):
    from CalibSegLib.errors import Cancelled

    source = _bundle(tmp_path, LOAD)
    seen: list[float] = []
    card = import_model(source, str(tmp_path / "done"),
                        progress=lambda fraction, message: seen.append(fraction))
    assert card.architecture == "monai.bundle" and (tmp_path / "done" / "model.json").exists()
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) >= 5
    calls = []

    def cancel_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        import_model(source, str(tmp_path / "cancelled"), cancel=cancel_after_two)
    assert not (tmp_path / "cancelled").exists()
    assert not any(n.startswith(".calibseg") for n in os.listdir(tmp_path))
