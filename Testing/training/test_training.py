"""Training: data loading, patches, checkpoints, losses decrease, push gallery, resume, Ctrl-C."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.training import (
    TrainConfig,
    case_features,
    csv_cases,
    folder_cases,
    format_seeds,
    parse_seeds,
    sample_cases,
    train,
)
from CalibSegLib.training.checkpoint import load_checkpoint, save_checkpoint
from CalibSegLib.training.patches import PatchSampler

CROP = (slice(12, 36), slice(17, 41), slice(12, 36))  # 24³ of the 4 mm case, mostly brain


@pytest.fixture(scope="module")
def tiny_cases():
    torch.set_num_threads(2)
    train_cases = sample_cases("mni-t1", seeds=[1, 2], resolution_mm=4.0, crop=CROP)
    val_cases = sample_cases("mni-t1", seeds=[41], resolution_mm=4.0, crop=CROP)
    return train_cases, val_cases


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        channels=(4, 8, 16), strides=(2, 2), num_res_units=0, feature_dim=6,
        prototypes_per_class=2, patch_size=(16, 16, 16), batch_size=2, steps=12,
        warmup_steps=3, last_layer_steps=3, learning_rate=1e-2, log_every=1,
        checkpoint_every=4, push_cases=2, gallery_size=8, seed=3, dice_checks=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def _weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


# --- data -------------------------------------------------------------------------------------

def test_parse_and_format_seeds():
    assert parse_seeds("1-4, 7,9-10") == [1, 2, 3, 4, 7, 9, 10]
    assert format_seeds([10, 1, 2, 3, 7, 9]) == "1-3,7,9-10"
    assert parse_seeds(format_seeds(range(1, 41))) == list(range(1, 41))
    for bad in ("", "a-b", "5-2"):
        with pytest.raises(CalibSegError):
            parse_seeds(bad)


def test_folder_and_csv_cases(tmp_path, tiny_cases):
    from CalibSegLib.io import write_image

    case = tiny_cases[0][0]
    for name in ("a", "b"):
        write_image(str(tmp_path / f"{name}_image.nii.gz"), case.image, case.affine)
        write_image(str(tmp_path / f"{name}_labels.nii.gz"), case.labels, case.affine)
    cases = folder_cases(str(tmp_path))
    assert [c.case_id for c in cases] == ["a", "b"]
    np.testing.assert_array_equal(cases[0].labels, case.labels)
    np.testing.assert_allclose(cases[0].affine, case.affine, atol=1e-5)
    (tmp_path / "list.csv").write_text("image,labels,id\na_image.nii.gz,a_labels.nii.gz,first\n")
    assert [c.case_id for c in csv_cases(str(tmp_path / "list.csv"))] == ["first"]
    os.remove(tmp_path / "b_labels.nii.gz")
    with pytest.raises(CalibSegError, match="no label file"):
        folder_cases(str(tmp_path))
    with pytest.raises(CalibSegError, match="no such folder"):
        folder_cases(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibSegError, match="pairs"):
        folder_cases(str(empty))


def test_patch_batches_depend_only_on_seed_and_step(tiny_cases):
    def norm(a):
        return (a - a.mean()) / a.std()

    one = PatchSampler(tiny_cases[0], norm, (16, 16, 16), 2, seed=5)
    two = PatchSampler(tiny_cases[0], norm, (16, 16, 16), 2, seed=5)
    x1, y1 = one.batch(7)
    one.batch(8)
    x2, y2 = two.batch(7)
    assert x1.shape == (2, 1, 16, 16, 16) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, one.batch(9)[0])


def test_checkpoint_round_trip_keeps_optimizer_state(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    save_checkpoint(str(tmp_path), net, opt, {"step": 1, "note": "x"})
    state, weights, optim = load_checkpoint(str(tmp_path))
    assert state["step"] == 1 and state["note"] == "x"
    for k, v in net.state_dict().items():
        assert torch.equal(weights[k], v)
    fresh = torch.optim.Adam(torch.nn.Linear(4, 3).parameters(), lr=0.1)
    fresh.load_state_dict(optim)
    for a, b in zip(opt.state.values(), fresh.state.values()):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
    # only safetensors + JSON: nothing to unpickle
    assert sorted(os.listdir(tmp_path)) == [
        "optimizer-0000001.safetensors", "state.json", "weights-0000001.safetensors"]


# --- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["linear", "prototype"])
@pytest.mark.parametrize("loss", ["none", "hard", "soft"])
def test_training_decreases_the_loss(tmp_path, tiny_cases, head, loss):
    config = tiny_config(head=head, calibration_loss=loss, calibration_weight=1.0,
                         warmup_steps=0, last_layer_steps=0, steps=14)
    result = train(config, *tiny_cases, str(tmp_path / "m"), command="test")
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 14
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    if loss != "none":
        assert all("ace" in h for h in result.history)
    assert os.path.exists(tmp_path / "m" / "model.json")
    assert not os.path.exists(tmp_path / "m" / "checkpoint")
    assert result.temperature > 0


@pytest.fixture(scope="module")
def prototype_run(tmp_path_factory, tiny_cases):
    folder = str(tmp_path_factory.mktemp("proto") / "model")
    result = train(tiny_config(dice_checks=True), *tiny_cases, folder, command="test")
    checks = result.summary["dice_checks"]["class_dice"]
    assert [c["when"] for c in checks] == ["end of warmup", "end of joint", "before push",
                                           "after push", "end of last"]
    return folder, result


def test_push_gallery_points_at_real_voxels_of_the_class(prototype_run, tiny_cases):
    from CalibSegLib.io import read_image
    from CalibSegLib.training import card as card_mod

    folder, result = prototype_run
    by_id = {c.case_id: c for c in tiny_cases[0]}
    network = result.network.eval()
    normalise = card_mod.normaliser(result.card)
    protos = network.prototypes.detach()
    assert len(result.catalogue) == protos.shape[0] == 6
    for entry in result.catalogue:
        case = by_id[entry["case"]]
        i, j, k = entry["voxel"]
        assert int(case.labels[k, j, i]) == entry["class"]
        assert entry["class"] == int(network.prototype_class[entry["index"]])
        _, features = case_features(network, normalise(case.image), (16, 16, 16))
        torch.testing.assert_close(features[:, k, j, i], protos[entry["index"]],
                                   rtol=1e-4, atol=1e-4)
        crop, affine = read_image(os.path.join(folder, entry["gallery"]))
        (i0, i1), (j0, j1), (k0, k1) = entry["bbox"]
        assert crop.shape == (k1 - k0, j1 - j0, i1 - i0)
        np.testing.assert_allclose(crop, case.image[k0:k1, j0:j1, i0:i1], rtol=1e-5)
        ras_in_crop = affine @ np.array([i - i0, j - j0, k - k0, 1.0])
        np.testing.assert_allclose(ras_in_crop, case.affine @ np.array([i, j, k, 1.0]), atol=1e-4)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, prototype_run, tiny_cases):
    folder = str(tmp_path / "resumed")
    config = tiny_config(dice_checks=True)
    assert train(config, *tiny_cases, folder, stop_after=7) is None
    state, _, _ = load_checkpoint(os.path.join(folder, "checkpoint"))
    assert state["step"] == 7
    resumed = train(config, *tiny_cases, folder, resume=True, command="test")
    reference = _weights(prototype_run[0])
    again = _weights(folder)
    assert reference.keys() == again.keys()
    for key in reference:
        assert torch.equal(reference[key], again[key]), key
    assert resumed.catalogue == prototype_run[1].catalogue


def test_ctrl_c_leaves_a_valid_checkpoint(tmp_path, tiny_cases):
    folder = str(tmp_path / "interrupted")

    def progress(fraction, message):
        if "step 10/" in message:
            raise KeyboardInterrupt

    config = tiny_config(head="linear", steps=14, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        train(config, *tiny_cases, folder, progress=progress)
    state, weights, optim = load_checkpoint(os.path.join(folder, "checkpoint"))
    assert state["step"] == 8 and optim is not None and weights
    leftovers = [n for n in os.listdir(os.path.join(folder, "checkpoint")) if n.startswith(".")]
    assert leftovers == []
    with pytest.raises(CalibSegError, match="--resume"):
        train(config, *tiny_cases, folder)
    result = train(config, *tiny_cases, folder, resume=True)
    assert result.summary["steps"] == 14


def test_bad_settings_are_user_errors(tmp_path, tiny_cases):
    with pytest.raises(CalibSegError, match="divisible"):
        train(tiny_config(patch_size=(18, 16, 16)), *tiny_cases, str(tmp_path / "x"))
    with pytest.raises(CalibSegError, match="calibration loss"):
        train(tiny_config(calibration_loss="medium"), *tiny_cases, str(tmp_path / "x"))
    with pytest.raises(CalibSegError, match="classes"):
        train(tiny_config(class_names=["bg", "fg"]), *tiny_cases, str(tmp_path / "x"))


def test_measure_throughput(tiny_cases):
    from CalibSegLib.training import measure_throughput

    rows = measure_throughput(("none", "hard", "soft"), config=tiny_config(), cases=tiny_cases[0],
                              steps=2, warmup=1)
    assert [r["loss"] for r in rows] == ["none", "hard", "soft"]
    for row in rows:
        assert row["iterations_per_second"] > 0
        assert row["voxels_per_second"] == pytest.approx(
            row["iterations_per_second"] * 2 * 16 ** 3)


def test_train_command_line(tmp_path):
    from CalibSegLib.cli import main
    from CalibSegLib.models import load_model

    out = str(tmp_path / "cli-model")
    argv = ["train", "-q", "--sample", "mni-t1", "--resolution", "4", "--crop", "12:36,17:41,12:36",
            "--train-seeds", "1-2", "--val-seeds", "41", "--head", "linear", "--channels",
            "4,8,16", "--res-units", "0", "--patch", "16", "--batch", "1", "--steps", "3",
            "--calibration-loss", "hard", "--calibration-weight", "0.5", "-o", out]
    assert main(argv) == 0
    model = load_model(out)
    training = model.card.training
    assert "--calibration-loss hard --calibration-weight 0.5" in training["command"]
    assert training["weights"]["ace"] == 0.5
    assert training["data"]["train_seeds"] == "1-2"
    assert main(argv) == 2  # the folder is used: --resume or --overwrite needed
    assert main(argv + ["--overwrite"]) == 0
    assert main(["train", "-q", "--sample", "mni-t1", "--train-seeds", "1-3", "--val-seeds", "3",
                 "-o", str(tmp_path / "x")]) == 2  # overlapping seeds


def test_train_chest_ct_records_spacing_total_steps_and_wall_time(tmp_path, capsys):
    """--steps is the whole budget, the card has the CT's own spacing, the model folder one
    file mode, and the last line the whole run's time."""
    import stat
    import time

    from CalibSegLib.cli import main
    from CalibSegLib.data import sample_case
    from CalibSegLib.models import load_model

    out = str(tmp_path / "ct-model")
    started = time.perf_counter()
    assert main(["train", "--sample", "ct-chest", "--crop", "8:24,40:72,40:72", "--train-seeds",
                 "1", "--val-seeds", "2", "--head", "prototype", "--channels", "4,8,16",
                 "--res-units", "0", "--patch", "16", "--batch", "1", "--steps", "4",
                 "--warmup-steps", "1", "--last-layer-steps", "1", "--push-cases", "1",
                 "-o", out]) == 0
    wall = time.perf_counter() - started
    err = capsys.readouterr().err
    model = load_model(out)
    np.testing.assert_allclose(model.card.spacing_mm, sample_case("ct-chest").spacing, rtol=1e-6)
    data = model.card.training["data"]
    assert data["spacing_mm"] == pytest.approx([3.0469, 3.0469, 10.0], abs=1e-3)
    assert data["resolution_mm"] is None and "--resolution" not in model.card.training["command"]
    history = model.card.training.get("log_summary", {})
    assert history.get("steps", 4) == 4
    done = [line for line in err.splitlines() if line.startswith("done in ")]
    assert len(done) == 1 and ": 4 steps (" in done[0]
    reported = float(done[0].split()[2])
    assert reported == pytest.approx(wall, abs=max(2.0, 0.1 * wall))
    modes = {stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode)
             for base, _, names in os.walk(out) for name in names}
    assert len(modes) == 1
