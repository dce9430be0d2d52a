"""Imported models predict what their own framework predicts on the same image file.

Oracles are built from MONAI's, nibabel's and torch's own classes in the test, never from
CalibSeg code: a MONAI bundle's transforms and ``SlidingWindowInferer`` (then
``Invertd`` back to the file's grid), and a TorchScript module run on ``nib.load(f)``'s
array. CalibSeg's side is the command line import, CalibSeg's own image reader
(SimpleITK, ``(Z, Y, X)``) and :func:`CalibSegLib.inference.predict`.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import (
    Activationsd,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRangePercentilesd,
    ShiftIntensityd,
    Spacingd,
)
from scipy.ndimage import gaussian_filter

from CalibSegLib.cli import main
from CalibSegLib.inference import predict
from CalibSegLib.io import read_image
from CalibSegLib.models import Model, load_model

PIXDIM = [1.5, 1.5, 2.0]
ROI = [16, 16, 16]
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
        "strides": [2, 2], "num_res_units": 0}


def _oracle_network(seed: int = 3) -> UNet:
    torch.manual_seed(seed)
    net = UNet(**UNET).eval()
    with torch.no_grad():  # larger weights than the init, so classes differ clearly
        for p in net.parameters():
            p.mul_(2.0)
    return net


def _oracle_transforms() -> list:
    """The bundle's preprocessing, as MONAI classes (also written to the bundle's JSON)."""
    return [
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=PIXDIM, mode="bilinear"),
        ScaleIntensityRangePercentilesd(keys="image", lower=1, upper=99, b_min=0.0, b_max=1.0,
                                        clip=True),
        NormalizeIntensityd(keys="image", nonzero=False),
        ShiftIntensityd(keys="image", offset=0.5),
    ]


def _write_bundle(root, network: UNet) -> str:
    folder = root / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {
        "imports": ["$import torch"],
        "image_key": "image",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", **UNET},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": PIXDIM, "mode": "bilinear"},
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": "@image_key", "lower": 1,
             "upper": 99, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": False},
            {"_target_": "ShiftIntensityd", "keys": "@image_key", "offset": 0.5},
            {"_target_": "EnsureTyped", "keys": "@image_key"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 2,
                    "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
             "orig_keys": "@image_key", "nearest_interp": False},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {
        "outputs": {"pred": {"num_channels": 3, "channel_def": {
            "0": "background", "1": "core", "2": "rim"}}}}}))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return str(folder)


def _smooth_image(shape_xyz, seed: int = 0) -> np.ndarray:
    """A smooth (X, Y, Z) volume with a bright blob, a dark background and some zeros."""
    rng = np.random.default_rng(seed)
    noise = gaussian_filter(rng.normal(size=shape_xyz), 2.0) * 40.0
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_xyz], indexing="ij"))
    blob = 300.0 * np.exp(-((grid ** 2).sum(axis=0)) / 0.3)
    image = (100.0 + blob + noise).astype(np.float32)
    image[:2] = 0.0
    return image


def _write_nifti(path, image_xyz: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(image_xyz, affine), str(path))
    return str(path)


def _monai_bundle_probs(path: str, network: UNet):
    """The bundle run with MONAI: probabilities on the model grid and back on the file's grid."""
    pre = Compose(_oracle_transforms())
    data = pre({"image": path})
    inferer = SlidingWindowInferer(roi_size=ROI, sw_batch_size=2, overlap=0.5)
    with torch.no_grad():
        logits = inferer(data["image"][None], network)
    data["pred"] = logits[0]
    data = Activationsd(keys="pred", softmax=True)(data)
    model_grid = data["pred"].clone()
    inverted = Invertd(keys="pred", transform=pre, orig_keys="image",
                       nearest_interp=False)(data)["pred"]
    return model_grid, inverted, data["image"].affine


def _calibseg_probs(bundle: str, path: str, out_folder: str) -> tuple[np.ndarray, dict]:
    assert main(["-q", "import-model", bundle, "-o", out_folder]) == 0
    model = load_model(out_folder)
    volume, affine = read_image(path)
    prediction = predict(volume, affine, model, device="cpu")
    return prediction.probs, prediction.info


def test_bundle_matches_monai_on_the_model_grid(tmp_path):
    network = _oracle_network()
    bundle = _write_bundle(tmp_path, network)
    affine = np.diag(PIXDIM + [1.0])
    affine[:3, 3] = [-20.0, 14.0, -9.0]
    path = _write_nifti(tmp_path / "case.nii.gz", _smooth_image((24, 20, 22)), affine)
    model_grid, inverted, monai_affine = _monai_bundle_probs(path, network)
    assert tuple(model_grid.shape[1:]) == (24, 20, 22)
    np.testing.assert_allclose(np.asarray(monai_affine), affine, atol=1e-5)  # no resampling
    probs, info = _calibseg_probs(bundle, path, str(tmp_path / "imported"))
    assert not info["resampled"] and info["axis_order"] == "XYZ"
    card = load_model(str(tmp_path / "imported")).card
    assert [t["transform"] for t in card.preprocessing] == [
        "ScaleIntensityRangePercentiles", "NormalizeIntensity", "ShiftIntensity"]
    assert card.sliding_window["mode"] == "constant" and card.sliding_window["overlap"] == 0.5
    assert any("EnsureTyped" in note for note in card.review_notes)
    expected = np.asarray(model_grid).transpose(0, 3, 2, 1)  # (C, X, Y, Z) -> (C, Z, Y, X)
    assert probs.shape == expected.shape
    assert np.abs(probs - expected).max() < 1e-3
    assert np.abs(probs - np.asarray(inverted).transpose(0, 3, 2, 1)).max() < 1e-3
    assert len(np.unique(expected.argmax(axis=0))) >= 2  # not trivially one class
    # The comparison can fail: the network on CalibSeg's (Z, Y, X) array (the behaviour
    # before axis_order existed) is far from MONAI.
    model = load_model(str(tmp_path / "imported"))
    transposed = Model(card=model.card.replace(axis_order="ZYX"), network=model.network)
    volume, affine_read = read_image(path)
    wrong = predict(volume, affine_read, transposed, device="cpu").probs
    assert np.abs(wrong - expected).max() > 0.1


def _rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    ax, az = np.deg2rad(degrees_x), np.deg2rad(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


# Oblique, anisotropic input (a flipped first axis, 17° and 11° rotations, 1.1 x 0.9 x
# 2.6 mm): both MONAI (Orientationd + Spacingd, then Invertd) and CalibSeg resample twice.
# The imported card follows the bundle's conventions, so both sides use the same model
# grid (MONAI's Spacing grid: oblique directions kept, MONAI's extent), the same trilinear
# interpolation with border padding, the intensity statistics on that grid, and resample
# probabilities (not logits) back. What remains is float32 rounding in two different
# chains of affine arithmetic: about 1e-6 measured. So the tolerance is the no-resampling
# one, 1e-3. The test checks that it separates: with CalibSeg's own conventions for either
# step (logits resampled back, or statistics on the input grid) the difference is far
# larger.
OBLIQUE_TOLERANCE = 1e-3


def test_bundle_matches_monai_on_an_oblique_anisotropic_image(tmp_path):
    network = _oracle_network()
    bundle = _write_bundle(tmp_path, network)
    linear = _rotation(17.0, 11.0) @ np.diag([-1.1, 0.9, 2.6])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [25.0, -18.0, -12.0]
    path = _write_nifti(tmp_path / "oblique.nii.gz", _smooth_image((28, 30, 10), seed=1),
                        affine)
    _, inverted, _ = _monai_bundle_probs(path, network)
    probs, info = _calibseg_probs(bundle, path, str(tmp_path / "imported"))
    assert info["resampled"]
    expected = np.asarray(inverted).transpose(0, 3, 2, 1)
    assert probs.shape == expected.shape
    assert np.abs(probs - expected).max() < OBLIQUE_TOLERANCE
    assert len(np.unique(expected.argmax(axis=0))) >= 2
    model = load_model(str(tmp_path / "imported"))
    volume, affine_read = read_image(path)
    for change in ({"output_resampling": "logits"}, {"preprocessing_grid": "input"}):
        other = Model(card=model.card.replace(**change), network=model.network)
        probs_other = predict(volume, affine_read, other, device="cpu").probs
        assert np.abs(probs_other - expected).max() > 10 * OBLIQUE_TOLERANCE, change
