"""nnU-Net v2 import: CalibSeg's probabilities against nnU-Net's own ``nnUNetPredictor``.

The model folders are made here with nnU-Net's own code: a tiny raw dataset of
synthetic NIfTI cases, nnU-Net's fingerprint extraction and experiment planner
(then smaller feature counts, so the network runs in milliseconds), nnU-Net's
preprocessor and trainer, whose ``save_checkpoint`` writes randomly initialised
folds in nnU-Net's real checkpoint format.

Tolerance: max |Δp| < 1e-3 (the requirement). Both sides run the same nnU-Net
preprocessing, sliding window (which accumulates logits in float16) and
resampling code on the same arrays, so the expected difference is float32
round-off of the softmax (about 1e-7); 1e-3 leaves room for thread-count
dependent convolution sums, and is still far below the differences a wrong
axis order, a missing transpose, another resampling or another ensemble rule
give (tenths, checked below where they are cheap).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import types

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="needs the nnunet extra (pip install nnunetv2)")

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from CalibSegLib.errors import CalibSegError  # noqa: E402

TOLERANCE = 1e-3
FEATURES = [4, 8, 16]
CT_SPACING = (3.5, 1.0, 1.0)   # SimpleITK (x, y, z): x is coarse, so nnU-Net transposes
MR_SPACING = (1.0, 1.0, 1.0)


# -- building nnU-Net model folders with nnU-Net's own code -----------------------------------

def _write_case(path: pathlib.Path, array: np.ndarray, spacing, direction=None, origin=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        image.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    if origin is not None:
        image.SetOrigin([float(v) for v in origin])
    sitk.WriteImage(image, str(path))
    return image


def _synthetic_case(rng, shape, offset: float, scale: float):
    """``(image, labels)`` (Z, Y, X): a ball (1) and a slab (2) on a noisy background."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = np.array(shape) / 2.0
    ball = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) < 12
    labels = np.where(ball, 1, np.where(xx >= shape[2] - 3, 2, 0)).astype(np.uint8)
    image = rng.normal(offset, scale, shape) + labels * 2.0 * scale
    return image.astype(np.float32), labels


def _in_process_pool():
    """nnU-Net's fingerprint extraction asks for a spawn pool; give it threads instead."""
    import multiprocessing.pool

    return types.SimpleNamespace(get_context=lambda kind: types.SimpleNamespace(
        Pool=multiprocessing.pool.ThreadPool))


def make_results_folder(root: pathlib.Path, dataset_id: int, channel: str, spacing,
                        folds=(0, 1), offset: float = 100.0, scale: float = 30.0,
                        reader: str | None = None) -> pathlib.Path:
    """Raw dataset -> nnU-Net fingerprint + plans -> trainer checkpoints; the results folder."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiments,
    )
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = f"Dataset{dataset_id}_Tiny{channel}"
    raw = root / "nnUNet_raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(dataset_id)
    for i in range(3):
        image, labels = _synthetic_case(rng, (18 + 2 * i, 22, 12), offset, scale)
        _write_case(raw / "imagesTr" / f"case{i}_0000.nii.gz", image, spacing)
        _write_case(raw / "labelsTr" / f"case{i}.nii.gz", labels, spacing)
    dataset = {"channel_names": {"0": channel}, "labels": {"background": 0, "ball": 1, "slab": 2},
               "numTraining": 3, "file_ending": ".nii.gz"}
    if reader is not None:
        dataset["overwrite_image_reader_writer"] = reader
    (raw / "dataset.json").write_text(json.dumps(dataset))

    class SmallSampleFingerprint(fingerprint_extractor.DatasetFingerprintExtractor):
        """nnU-Net's extractor, with 3e4 instead of 1e8 foreground intensity samples."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 3e4

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fingerprint_extractor, "multiprocessing", _in_process_pool())
        extract_fingerprint_dataset(dataset_id, SmallSampleFingerprint, num_processes=1,
                                    verbose=False, show_progress_bar=False)
    plan_experiments([dataset_id])
    preprocessed = root / "nnUNet_preprocessed" / name
    plans_path = preprocessed / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = FEATURES[:arch["n_stages"]]
    plans_path.write_text(json.dumps(plans))
    shutil.copy(raw / "dataset.json", preprocessed / "dataset.json")
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    out = preprocessed / config.data_identifier
    out.mkdir()
    for i in range(3):  # what the trainer's initialize() looks for
        DefaultPreprocessor(verbose=False).run_case_save(
            str(out / f"case{i}"), [str(raw / "imagesTr" / f"case{i}_0000.nii.gz")],
            str(raw / "labelsTr" / f"case{i}.nii.gz"), manager, config, dataset)
    for fold in folds:
        torch.manual_seed(100 * dataset_id + fold)
        trainer = get_trainer_from_args(str(dataset_id), "3d_fullres", fold,
                                        device=torch.device("cpu"))
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        trainer.logger.log("train_losses", np.float64(0.5), 0)  # numpy scalars, as in training
        trainer._best_ema = np.float64(0.25)
        pathlib.Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    base = pathlib.Path(trainer.output_folder_base)
    save_json(trainer.plans_manager.plans, str(base / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(base / "dataset.json"), sort_keys=False)
    return base


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (root / key).mkdir()
            mp.setenv(key, str(root / key))
        mp.setenv("nnUNet_def_n_proc", "1")
        yield root


@pytest.fixture(scope="module")
def ct_results(nnunet_root):
    return make_results_folder(nnunet_root, 901, "CT", CT_SPACING, folds=(0, 1))


@pytest.fixture(scope="module")
def mr_results(nnunet_root):
    return make_results_folder(nnunet_root, 902, "MRI", MR_SPACING, folds=(0,),
                               reader="NibabelIO")


@pytest.fixture(scope="module")
def images(nnunet_root):
    return write_test_images(nnunet_root / "images")


def write_test_images(folder: pathlib.Path) -> dict[str, str]:
    """Test images: one on the CT model's grid, one oblique and anisotropic."""
    rng = np.random.default_rng(7)
    folder.mkdir()
    image, _ = _synthetic_case(rng, (20, 26, 13), 100.0, 30.0)
    image[:, :2, :] = 0.0  # a zero border: nnU-Net crops it and reports background there
    _write_case(folder / "grid.nii.gz", image, CT_SPACING)
    oblique, _ = _synthetic_case(rng, (12, 24, 13), 100.0, 30.0)
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                         [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    swap_jk = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _write_case(folder / "oblique.nii.gz", oblique, (2.3, 0.8, 1.4), rotation @ swap_jk,
                (-12.0, 30.5, 4.0))
    return {"grid": str(folder / "grid.nii.gz"), "oblique": str(folder / "oblique.nii.gz")}


def nnunet_probabilities(results: pathlib.Path, image: str, folds, mirroring: bool,
                         out: pathlib.Path) -> np.ndarray:
    """nnU-Net's own prediction of ``image`` (``(C, Z, Y, X)`` probabilities, its npz)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results), tuple(folds),
                                                   "checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential([[image]], [str(out / "case")],
                                            save_probabilities=True, overwrite=True)
    return np.load(out / "case.npz")["probabilities"]


def calibseg_probabilities(model_folder: str, image: str, **options):
    from CalibSegLib.inference import predict
    from CalibSegLib.io import read_image
    from CalibSegLib.models import load_model

    array, affine = read_image(image)
    return predict(array, affine, load_model(model_folder), device="cpu", **options)


def _import(results, folder, **options) -> str:
    from CalibSegLib.models.nnunet_import import import_nnunet

    return import_nnunet(str(results), str(folder), **options)


# -- oracle tests -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ct_model(ct_results, nnunet_root):
    (nnunet_root / "models").mkdir(exist_ok=True)
    return _import(ct_results, nnunet_root / "models" / "ct", folds=[0, 1])


def test_import_writes_a_model_folder(ct_model, ct_results):
    from CalibSegLib.models import load_model
    from CalibSegLib.models.nnunet import NNUNetEnsemble

    model = load_model(ct_model)
    card = model.card
    assert card.architecture == "nnunet"
    assert card.class_names == ("background", "ball", "slab")
    assert isinstance(model.network, NNUNetEnsemble) and len(model.network.folds) == 2
    plans = json.loads((ct_results / "plans.json").read_text())
    assert card.nnunet["transpose_forward"] == plans["transpose_forward"] != [0, 1, 2]
    assert card.nnunet["normalization_schemes"] == ["CTNormalization"]
    assert card.nnunet["mirroring"] is False
    assert card.spacing_mm == pytest.approx(CT_SPACING)
    assert sorted(os.listdir(ct_model)) == ["model.json", "model.safetensors"]
    assert card.nnunet["plans"] == plans
    assert card.nnunet["dataset"] == json.loads((ct_results / "dataset.json").read_text())
    # the stored weights are each fold's, unchanged
    for fold, network in zip((0, 1), model.network.folds):
        ckpt = torch.load(ct_results / f"fold_{fold}" / "checkpoint_final.pth",
                          weights_only=False)
        for key, value in ckpt["network_weights"].items():
            assert torch.equal(network.state_dict()[key], value), key


def test_ensemble_network_averages_folds_and_refuses_other_windows(ct_model):
    from CalibSegLib.models import load_model

    model = load_model(ct_model)
    patch = model.card.nnunet["plans"]["configurations"]["3d_fullres"]["patch_size"]
    x = torch.randn(1, 1, *patch)
    with torch.no_grad():
        mean = (model.network.folds[0](x) + model.network.folds[1](x)) / 2
        assert torch.allclose(model.network(x), mean)
    with pytest.raises(CalibSegError, match="nnU-Net-preprocessed windows"):
        model.network(torch.randn(1, 1, 16, 16, 13))


@pytest.mark.parametrize("image", ["grid", "oblique"])
def test_ct_ensemble_matches_nnunet_predictor(ct_model, ct_results, images, image, tmp_path):
    prediction = calibseg_probabilities(ct_model, images[image])
    reference = nnunet_probabilities(ct_results, images[image], (0, 1), False, tmp_path)
    assert prediction.probs.shape == reference.shape
    assert prediction.info["resampled"] is (image == "oblique")
    delta = np.abs(prediction.probs - reference).max()
    assert delta < TOLERANCE, delta
    # the comparison is not vacuous: the probabilities vary over the image
    assert reference.std(axis=(1, 2, 3)).max() > 0.01
    if image == "grid":  # cropped-away zero border: background with certainty, like nnU-Net
        assert np.all(prediction.probs[0, :, :2, :] == 1.0)
        assert np.all(reference[0, :, :2, :] == 1.0)


def test_command_line_import_and_predict(ct_results, images, tmp_path):
    """As a user would: calibseg import-model, then calibseg predict writes nnU-Net's
    probabilities."""
    from CalibSegLib.cli import main

    model = tmp_path / "model"
    assert main(["-q", "import-model", str(ct_results), "-o", str(model), "--kind", "nnunet",
                 "--configuration", "3d_fullres", "--folds", "0", "1",
                 "--checkpoint", "checkpoint_final.pth"]) == 0
    out = tmp_path / "pred"
    assert main(["-q", "predict", images["oblique"], "--model", str(model), "-o", str(out),
                 "--device", "cpu"]) == 0
    written = [n for n in os.listdir(out) if "_probs" in n]
    assert len(written) == 1, os.listdir(out)
    probs = sitk.GetArrayFromImage(sitk.ReadImage(str(out / written[0])))  # (Z, Y, X, C)
    reference = nnunet_probabilities(ct_results, images["oblique"], (0, 1), False,
                                     tmp_path / "ref")
    assert np.abs(np.moveaxis(probs, -1, 0) - reference).max() < TOLERANCE


def test_one_fold_differs_from_the_ensemble(ct_results, images, tmp_path):
    """Sensitivity check: a one-fold model is far from the two-fold nnU-Net ensemble."""
    folder = _import(ct_results, tmp_path / "fold0", folds=[0])
    prediction = calibseg_probabilities(folder, images["grid"])
    alone = nnunet_probabilities(ct_results, images["grid"], (0,), False, tmp_path / "a")
    both = nnunet_probabilities(ct_results, images["grid"], (0, 1), False, tmp_path / "b")
    assert np.abs(prediction.probs - alone).max() < TOLERANCE
    assert np.abs(prediction.probs - both).max() > 100 * TOLERANCE


def test_mirroring_matches_nnunet_predictor(ct_results, images, tmp_path):
    folder = _import(ct_results, tmp_path / "mirrored", folds=[1], mirroring=True)
    prediction = calibseg_probabilities(folder, images["grid"])
    assert prediction.info["mirroring"] is True
    mirrored = nnunet_probabilities(ct_results, images["grid"], (1,), True, tmp_path / "m")
    assert np.abs(prediction.probs - mirrored).max() < TOLERANCE
    plain = nnunet_probabilities(ct_results, images["grid"], (1,), False, tmp_path / "p")
    assert np.abs(prediction.probs - plain).max() > 10 * TOLERANCE


def test_zscore_model_read_with_nibabel_matches_nnunet_predictor(mr_results, images, tmp_path):
    folder = _import(mr_results, tmp_path / "mr")
    from CalibSegLib.models import load_model

    settings = load_model(folder).card.nnunet
    assert settings["normalization_schemes"] == ["ZScoreNormalization"]
    assert settings["image_reader_writer"] == "NibabelIO"
    prediction = calibseg_probabilities(folder, images["oblique"])
    reference = nnunet_probabilities(mr_results, images["oblique"], (0,), False, tmp_path / "r")
    assert np.abs(prediction.probs - reference).max() < TOLERANCE


@pytest.mark.parametrize("reader", ["NibabelIOWithReorient", "SimpleITKIOWithReorient"])
def test_reorienting_reader_matches_nnunet_predictor(mr_results, images, reader, tmp_path):
    """Readers that reorient to RAS: nnU-Net's probabilities (its npz, in the reoriented
    layout) hold the same values, and its segmentation file (written back in the image's
    orientation by the reader's write_seg) the same labels, as CalibSeg's on the input grid."""
    from CalibSegLib.io import read_image

    results = _copy_results(mr_results, tmp_path / "results")
    plans = json.loads((results / "plans.json").read_text())
    plans["image_reader_writer"] = reader
    (results / "plans.json").write_text(json.dumps(plans))
    folder = _import(results, tmp_path / "model")
    prediction = calibseg_probabilities(folder, images["oblique"])
    reference = nnunet_probabilities(results, images["oblique"], (0,), False, tmp_path / "r")
    assert reference.shape[1:] != prediction.probs.shape[1:]  # the reader did reorient
    for ours, theirs in zip(prediction.probs, reference):
        assert np.abs(np.sort(ours, axis=None) - np.sort(theirs, axis=None)).max() < TOLERANCE
    segmentation, _ = read_image(str(tmp_path / "r" / "case.nii.gz"))
    top2 = np.sort(prediction.probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > TOLERANCE
    assert clear.mean() > 0.9
    assert np.array_equal(prediction.labels[clear], segmentation[clear])
    assert len(np.unique(segmentation)) > 1


def test_model_without_its_folder_predicts_the_same(ct_model, images):
    """Card and weights alone describe the model (as the federated transport sends it)."""
    from CalibSegLib.inference import predict
    from CalibSegLib.io import read_image
    from CalibSegLib.models import Model, load_model

    loaded = load_model(ct_model)
    detached = Model(card=loaded.card, network=loaded.network, folder=None)
    array, affine = read_image(images["grid"])
    ours = predict(array, affine, detached, device="cpu")
    assert np.array_equal(ours.probs, calibseg_probabilities(ct_model, images["grid"]).probs)


def test_overflowing_logits_are_one_clear_error(ct_model, images):
    """nnU-Net sums window logits in float16; an overflow is refused, not passed on."""
    from CalibSegLib.inference import predict
    from CalibSegLib.io import read_image
    from CalibSegLib.models import load_model

    model = load_model(ct_model)
    with torch.no_grad():
        for network in model.network.folds:
            for layer in network.decoder.seg_layers:
                layer.weight.mul_(1e7)
    array, affine = read_image(images["grid"])
    with pytest.raises(CalibSegError, match="infinite logits") as info:
        predict(array, affine, model, device="cpu")
    assert "\n" not in str(info.value)


def test_temperature_scales_the_averaged_logits(ct_model, images):
    from CalibSegLib.inference import apply_temperature

    prediction = calibseg_probabilities(ct_model, images["grid"])
    hotter = apply_temperature(prediction, 2.0)
    expected = torch.softmax(torch.tensor(prediction.logits) / 2.0, dim=0)
    assert np.abs(hotter.probs - expected.numpy()).max() < 1e-5


def test_prediction_reports_progress_and_can_be_cancelled(ct_model, images):
    from CalibSegLib.errors import Cancelled

    seen: list[float] = []
    calibseg_probabilities(ct_model, images["grid"], progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(seen) > 4

    calls: list[float] = []

    def cancel_after_first_window() -> bool:
        return len(calls) > 1

    with pytest.raises(Cancelled):
        calibseg_probabilities(ct_model, images["grid"], cancel=cancel_after_first_window,
                               progress=lambda f, m: calls.append(f))
    assert max(calls) < 0.5  # stopped within the first fold


# -- bad input: one clear line, nothing written -------------------------------------------------

def _copy_results(results: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(results, target)
    return target


def test_missing_fold_and_checkpoint_are_refused(ct_results, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CalibSegError, match=r"fold\(s\) 3 missing") as info:
        _import(ct_results, out, folds=[0, 3])
    assert "\n" not in str(info.value)
    with pytest.raises(CalibSegError, match="checkpoint_best.pth is missing") as info:
        _import(ct_results, out, folds=[0, 1], checkpoint="checkpoint_best.pth")
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_cli_missing_fold_is_one_line(ct_results, tmp_path, capsys):
    from CalibSegLib.cli import main

    out = tmp_path / "cli-out"
    code = main(["-q", "import-model", str(ct_results), "-o", str(out), "--kind", "nnunet",
                 "--folds", "0", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fold(s) 4 missing" in err[0], err
    assert not out.exists()


def _as_numpy1_pickle(path: pathlib.Path) -> None:
    """Rewrite a checkpoint as numpy 1 pickles scalars (``numpy.core.multiarray``), the form
    of most nnU-Net models trained so far."""
    import io
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar",
                                    b"numpy.core.multiarray\nscalar")
            target.writestr(info, data)
    path.write_bytes(out.getvalue())


def test_checkpoint_pickled_with_numpy1_loads(ct_results, tmp_path):
    from CalibSegLib.models import load_model

    results = _copy_results(ct_results, tmp_path / "results")
    path = results / "fold_0" / "checkpoint_final.pth"
    _as_numpy1_pickle(path)
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(path, weights_only=True)  # torch's default allow-list refuses it
    folder = _import(results, tmp_path / "model", folds=[0])
    weights = torch.load(path, weights_only=False)["network_weights"]
    loaded = load_model(folder).network.folds[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


class _Payload:
    """Unpickling this object touches a file (a stand-in for any code a pickle can run)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_checkpoint_that_runs_code_is_refused_before_it_runs(ct_results, tmp_path):
    results = _copy_results(ct_results, tmp_path / "results")
    path = results / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    marker = tmp_path / "pwned"
    checkpoint["logging"]["payload"] = _Payload(marker)
    torch.save(checkpoint, path)
    out = tmp_path / "out"
    with pytest.raises(CalibSegError, match="refused") as info:
        _import(results, out, folds=[0, 1])
    assert "\n" not in str(info.value) and "it names" in str(info.value)
    assert not marker.exists() and not out.exists()
    torch.load(path, weights_only=False)  # the payload is real: plain unpickling runs it
    assert marker.exists()


def test_region_based_model_is_refused(ct_results, tmp_path):
    results = _copy_results(ct_results, tmp_path / "regions")
    dataset = json.loads((results / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "whole": [1, 2], "slab": 2}
    dataset["regions_class_order"] = [1, 2]
    (results / "dataset.json").write_text(json.dumps(dataset))
    out = tmp_path / "out"
    with pytest.raises(CalibSegError, match="region-based"):
        _import(results, out, folds=[0, 1])
    assert not out.exists()


def test_network_class_outside_nnunet_architectures_is_refused():
    from CalibSegLib.models.nnunet import check_network_spec

    with pytest.raises(CalibSegError, match="not from dynamic_network_architectures"):
        check_network_spec({"class_name": "os.system", "arch_kwargs": {},
                            "kw_requires_import": []})
    with pytest.raises(CalibSegError, match="not a torch.nn layer"):
        check_network_spec({
            "class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"conv_op": "os.system"}, "kw_requires_import": ["conv_op"]})


def test_missing_nnunetv2_says_how_to_install(monkeypatch):
    import sys

    from CalibSegLib.models.nnunet import INSTALL_HINT, require_nnunetv2

    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    with pytest.raises(CalibSegError) as info:
        require_nnunetv2()
    assert str(info.value) == INSTALL_HINT and "pip install" in INSTALL_HINT
