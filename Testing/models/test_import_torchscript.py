"""TorchScript imports predict what the scripted module predicts on nibabel's array.

The oracle is the scripted module itself, run on ``nib.load(file).get_fdata()``
(MONAI's and nibabel's ``(X, Y, Z)`` order) after a numpy z-score; CalibSeg's side is
``calibseg import-model``, CalibSeg's own reader (``(Z, Y, X)``) and ``predict``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from doubles import WithHead
from monai.networks.nets import UNet
from torch import nn

from CalibSegLib.cli import main
from CalibSegLib.inference import apply_temperature, predict
from CalibSegLib.io import read_image
from CalibSegLib.models import load_model

SHAPE_XYZ = (20, 16, 12)
SPACING = (1.5, 1.5, 2.0)


def _scripted(head: str, path: str) -> nn.Module:
    torch.manual_seed(7)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16),
               strides=(2, 2), num_res_units=0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    module = torch.jit.script(WithHead(net, head).eval())
    torch.jit.save(module, path)
    return module


def _image_file(path: str) -> str:
    rng = np.random.default_rng(4)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE_XYZ], indexing="ij"))
    image = 50.0 + 200.0 * np.exp(-(((grid - 0.2) ** 2).sum(axis=0)) / 0.2)
    image += rng.normal(scale=5.0, size=SHAPE_XYZ)
    nib.save(nib.Nifti1Image(image.astype(np.float32), np.diag([*SPACING, 1.0])), path)
    return path


def _oracle(module: nn.Module, path: str) -> np.ndarray:
    """The module's own output on the nibabel array, ``(C, X, Y, Z)``."""
    array = nib.load(path).get_fdata().astype(np.float32)
    array = (array - array.mean()) / array.std()
    with torch.no_grad():
        return module(torch.from_numpy(array)[None, None])[0].numpy()


def _import(tmp_path, source: str, *extra: str) -> str:
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps([{"transform": "NormalizeIntensity", "args": {}}]))
    out = str(tmp_path / "imported")
    assert main(["-q", "import-model", source, "-o", out, "--patch-size", *map(str, SHAPE_XYZ),
                 "--spacing", *map(str, SPACING), "--preprocessing", str(pre), *extra]) == 0
    return out


@pytest.mark.parametrize("head,kind", [("none", "logits"), ("softmax", "probabilities"),
                                       ("log_softmax", "log_probabilities")])
def test_torchscript_matches_the_module_on_the_nibabel_array(tmp_path, head, kind):
    module = _scripted(head, str(tmp_path / "net.ts"))
    path = _image_file(str(tmp_path / "case.nii.gz"))
    folder = _import(tmp_path, str(tmp_path / "net.ts"))
    model = load_model(folder)
    assert model.card.output_kind == kind and model.card.axis_order == "XYZ"
    output = _oracle(module, path)
    expected = {"logits": lambda o: torch.softmax(torch.from_numpy(o), 0).numpy(),
                "probabilities": lambda o: o,
                "log_probabilities": np.exp}[kind](output)
    volume, affine = read_image(path)
    prediction = predict(volume, affine, model, device="cpu")
    assert not prediction.info["resampled"]
    probs = prediction.probs.transpose(0, 3, 2, 1)  # (C, Z, Y, X) -> (C, X, Y, Z)
    assert np.abs(probs - expected).max() < 1e-5
    # No second softmax: the confidence spans what the model's own probabilities span.
    assert abs(float(prediction.confidence.max()) - float(expected.max(axis=0).max())) < 1e-5
    assert abs(float(prediction.confidence.min()) - float(expected.max(axis=0).min())) < 1e-5
    # Temperature works on log p: softmax(log p / T) = p^(1/T) / sum_c p^(1/T).
    warmed = apply_temperature(prediction, 2.0).probs.transpose(0, 3, 2, 1)
    root = np.sqrt(expected.astype(np.float64))
    np.testing.assert_allclose(warmed, root / root.sum(axis=0), atol=1e-5)


def test_probability_model_without_its_kind_would_be_squashed(tmp_path):
    """The failure the output kind prevents: a softmax network read as logits."""
    module = _scripted("softmax", str(tmp_path / "net.ts"))
    path = _image_file(str(tmp_path / "case.nii.gz"))
    expected = _oracle(module, path)
    double = torch.softmax(torch.from_numpy(expected), 0).numpy()
    assert double.max() < 0.58 and expected.max() > 0.9  # e / (e + 2): squashed towards 1/C
    folder = _import(tmp_path, str(tmp_path / "net.ts"))
    volume, affine = read_image(path)
    probs = predict(volume, affine, load_model(folder), device="cpu").probs
    assert np.abs(probs.transpose(0, 3, 2, 1) - double).max() > 0.3


def test_explanations_see_the_same_function_as_the_prediction(tmp_path):
    """The explanation segmenter of an imported (X, Y, Z), probability-output model gives
    the prediction's logits (log p) and is differentiable through the preprocessing."""
    from CalibSegLib.explain.adapt import as_segmenter

    _scripted("softmax", str(tmp_path / "net.ts"))
    path = _image_file(str(tmp_path / "case.nii.gz"))
    model = load_model(_import(tmp_path, str(tmp_path / "net.ts")))
    volume, affine = read_image(path)
    prediction = predict(volume, affine, model, device="cpu")
    segmenter = as_segmenter(model, affine=affine)
    x = torch.from_numpy(volume.astype(np.float32))[None, None].requires_grad_()
    logits = segmenter(x)[0]
    probs = torch.softmax(logits, dim=0).detach().numpy()
    np.testing.assert_allclose(probs, prediction.probs, atol=1e-5)
    logits[1].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
