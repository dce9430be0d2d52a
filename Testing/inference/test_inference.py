"""predict / apply_temperature: fields, exactness, progress, cancel, geometry, OOM fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from CalibSegLib.errors import CalibSegError, Cancelled
from CalibSegLib.inference import apply_temperature, model_grid, predict, resample
from CalibSegLib.inference import sliding as sliding_module
from CalibSegLib.models import Model, load_model, new_card
from CalibSegLib.models.testing import tiny_model


@pytest.fixture(scope="module")
def proto_model(tmp_path_factory):
    return load_model(tiny_model(str(tmp_path_factory.mktemp("m") / "proto"), seed=1))


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    return load_model(tiny_model(str(tmp_path_factory.mktemp("m") / "lin"), head="linear"))


@pytest.fixture(scope="module")
def proto_prediction(proto_model, mni_case_4mm):
    return predict(mni_case_4mm.image, mni_case_4mm.affine, proto_model, device="cpu")


def _softmax(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits.astype(np.float64) / t
    z -= z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def test_prediction_fields(proto_prediction, mni_case_4mm):
    p = proto_prediction
    shape = mni_case_4mm.image.shape
    assert p.logits.shape == (3, *shape) and p.logits.dtype == np.float32
    assert p.probs.shape == (3, *shape) and p.probs.dtype == np.float32
    assert p.labels.shape == shape and p.labels.dtype == np.uint8
    assert p.confidence.dtype == np.float32 and p.entropy.dtype == np.float32
    assert p.nearest_prototype.dtype == np.int16 and p.nearest_prototype.shape == shape
    assert p.similarity.shape == (6, *shape)
    assert p.top_similarity.shape == shape and p.prototype_contribution.shape == shape
    np.testing.assert_array_equal(p.labels, p.logits.argmax(0))
    np.testing.assert_allclose(p.probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(p.confidence, p.probs.max(0), atol=1e-6)
    assert p.entropy.min() >= 0.0 and p.entropy.max() <= 1.0
    h = -(p.probs * np.log(np.clip(p.probs, 1e-30, None))).sum(0) / np.log(3)
    np.testing.assert_allclose(p.entropy, h, atol=1e-4)
    np.testing.assert_allclose(p.affine, mni_case_4mm.affine)
    assert p.class_names == ("background", "class 1", "class 2")
    assert p.model_name == "tiny-prototype" and p.temperature == 1.0
    assert not p.logits.flags.writeable
    np.testing.assert_array_equal(p.nearest_prototype, p.similarity.argmax(0))
    np.testing.assert_allclose(p.top_similarity, p.similarity.max(0))


def test_contributions_sum_to_logits_on_input_grid(proto_prediction):
    p = proto_prediction
    for c in range(3):
        np.testing.assert_allclose(p.class_contributions(c).sum(0), p.logits[c], atol=1e-5)
    own = p.prototype_class[None, :] == np.arange(3)[:, None]  # (C, P)
    per_class = np.einsum("cp,p...->c...", p.prototype_weights * own, p.similarity)
    winning = np.take_along_axis(per_class, p.labels[None].astype(np.int64), 0)[0]
    np.testing.assert_allclose(p.prototype_contribution, winning, atol=1e-5)
    z, y, x = (s // 2 for s in p.shape)
    np.testing.assert_allclose(p.contributions_at((z, y, x)).sum(1), p.logits[:, z, y, x],
                               atol=1e-5)


def test_maps_and_plain_logits_agree(proto_model, proto_prediction, mni_case_4mm):
    plain = predict(mni_case_4mm.image, mni_case_4mm.affine, proto_model, device="cpu",
                    maps=False)
    assert plain.similarity is None and plain.nearest_prototype is None
    np.testing.assert_allclose(plain.logits, proto_prediction.logits, atol=1e-4)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.7])
def test_apply_temperature_is_fresh_softmax(proto_prediction, t):
    before = proto_prediction.probs.copy()
    new = apply_temperature(proto_prediction, t)
    assert new is not proto_prediction and new.temperature == t
    np.testing.assert_allclose(new.probs, _softmax(proto_prediction.logits, t), atol=1e-6)
    np.testing.assert_allclose(new.confidence, new.probs.max(0), atol=1e-6)
    np.testing.assert_array_equal(new.labels, proto_prediction.labels)
    np.testing.assert_array_equal(proto_prediction.probs, before)
    assert proto_prediction.temperature == 1.0
    with pytest.raises(CalibSegError, match="positive"):
        apply_temperature(proto_prediction, 0.0)


def test_temperature_argument_and_card_default(proto_model, proto_prediction, mni_case_4mm):
    hot = predict(mni_case_4mm.image, mni_case_4mm.affine, proto_model, device="cpu",
                  temperature=2.0, maps=False)
    np.testing.assert_allclose(hot.probs, apply_temperature(proto_prediction, 2.0).probs,
                               atol=1e-4)


def test_linear_model_and_input_untouched(linear_model, mni_case_4mm):
    image = mni_case_4mm.image.copy()
    p = predict(image, mni_case_4mm.affine, linear_model, device="cpu")
    np.testing.assert_array_equal(image, mni_case_4mm.image)
    assert p.similarity is None and not p.is_prototype
    with pytest.raises(CalibSegError, match="prototype"):
        p.class_contributions(0)


def test_progress_monotone_and_cancel(proto_model, mni_case_4mm):
    seen: list[float] = []
    predict(mni_case_4mm.image, mni_case_4mm.affine, proto_model, device="cpu",
            sw_batch_size=2, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 5

    calls = {"n": 0, "after": 0}
    batches = {"n": 0}
    original = proto_model.network.similarity

    def counting(x):
        batches["n"] += 1
        return original(x)

    def cancel():
        calls["n"] += 1
        if batches["n"] >= 2:
            calls["after"] += 1
            return True
        return False

    proto_model.network.similarity = counting
    try:
        with pytest.raises(Cancelled):
            predict(mni_case_4mm.image, mni_case_4mm.affine, proto_model, device="cpu",
                    sw_batch_size=2, cancel=cancel)
    finally:
        del proto_model.network.similarity
    assert batches["n"] == 2 and calls["after"] == 1  # stopped at the next batch


@pytest.mark.parametrize("volume,affine,match", [
    (np.zeros((4, 4)), np.eye(4), "3D"),
    (np.zeros((2, 4, 4, 4)), np.eye(4), "3D"),
    (np.zeros((0, 4, 4)), np.eye(4), "empty"),
    (np.full((4, 4, 4), np.nan, dtype=np.float32), np.eye(4), "NaN"),
    (np.zeros((4, 4, 4)), np.eye(3), "4×4"),
    (np.zeros((4, 4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
    (np.zeros((4, 4, 4)), np.full((4, 4), np.nan), "finite"),
])
def test_input_validation(linear_model, volume, affine, match):
    with pytest.raises(CalibSegError, match=match):
        predict(volume, affine, linear_model, device="cpu")


class _Pointwise(nn.Module):
    """Logits that pick the class whose index is nearest the voxel value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.arange(3, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1, 1)
        return -4.0 * (x - centres) ** 2


def _pointwise_model() -> Model:
    card = new_card("pointwise", ["background", "grey", "white"], head="linear",
                    spacing_mm=(4.0, 4.0, 4.0), patch_size=(32, 32, 32),
                    normalization={"type": "none"})
    return Model(card=card, network=_Pointwise())


def _oblique_grid(case) -> tuple[tuple[int, int, int], np.ndarray]:
    a, b = np.deg2rad(25.0), np.deg2rad(-15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    spacing = np.array([3.0, 5.0, 4.5])
    size_ijk = np.array([60, 40, 44])
    centre = case.affine[:3, :3] @ ((np.array(case.image.shape[::-1]) - 1) / 2) + case.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = centre - affine[:3, :3] @ ((size_ijk - 1) / 2)
    return (int(size_ijk[2]), int(size_ijk[1]), int(size_ijk[0])), affine


def _nearest_on_grid(labels, affine, shape, target_affine) -> np.ndarray:
    zyx = np.indices(shape).reshape(3, -1)
    ijk1 = np.vstack([zyx[::-1], np.ones(zyx.shape[1])])
    src = np.linalg.solve(affine, target_affine @ ijk1)[:3]  # source (i, j, k)
    out = ndimage.map_coordinates(labels, src[::-1], order=0, mode="constant", cval=0)
    return out.reshape(shape)


def _dice(a, b, c) -> float:
    return 2 * np.sum((a == c) & (b == c)) / max(np.sum(a == c) + np.sum(b == c), 1)


def test_oblique_anisotropic_input_comes_back_on_its_grid(mni_case_4mm):
    shape, affine = _oblique_grid(mni_case_4mm)
    reference = _nearest_on_grid(mni_case_4mm.labels, mni_case_4mm.affine, shape, affine)
    assert {1, 2} <= set(np.unique(reference).tolist())
    grid_shape, grid_affine = model_grid(shape, affine, (4.0, 4.0, 4.0))
    assert not np.allclose(grid_affine[:3, :3], affine[:3, :3])
    p = predict(reference.astype(np.float32), affine, _pointwise_model(), device="cpu")
    assert p.info["resampled"] and p.labels.shape == shape and p.probs.shape == (3, *shape)
    np.testing.assert_allclose(p.affine, affine)
    for c in (1, 2):
        assert _dice(p.labels, reference, c) > 0.85, c


def test_flipped_axes_give_flipped_result(mni_case_4mm):
    model = _pointwise_model()
    image = mni_case_4mm.labels.astype(np.float32)
    straight = predict(image, mni_case_4mm.affine, model, device="cpu")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # i runs right-to-left
    n_i = image.shape[2]
    affine = mni_case_4mm.affine @ np.array(
        [[-1, 0, 0, n_i - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    assert np.allclose(affine[:3, :3], mni_case_4mm.affine[:3, :3] @ flip[:3, :3])
    flipped = predict(image[:, :, ::-1].copy(), affine, model, device="cpu")
    assert flipped.info["resampled"]
    np.testing.assert_array_equal(flipped.labels, straight.labels[:, :, ::-1])
    np.testing.assert_allclose(flipped.logits, straight.logits[..., ::-1], atol=1e-3)


def test_resample_round_trip_is_smooth():
    shape = (10, 12, 14)
    affine = np.diag([2.0, 3.0, 1.5, 1.0])
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    data = torch.from_numpy((0.3 * x + 0.2 * y - 0.1 * z)[None, None])
    grid_shape, grid_affine = model_grid(shape, affine, (1.0, 1.0, 1.0))
    there = resample(data, affine, grid_shape, grid_affine)
    back = resample(there, grid_affine, shape, affine)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(back[inner], data[inner], atol=1e-3, rtol=0)


def test_cuda_oom_fallback(monkeypatch, caplog):
    calls: list[tuple[int, str]] = []

    def fake(inputs, roi_size, sw_batch_size, predictor, **kwargs):
        calls.append((sw_batch_size, str(kwargs["device"])))
        if kwargs["device"] is None:  # stitching on the input's (CUDA) device
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return torch.zeros(1, 2, *inputs.shape[2:])

    monkeypatch.setattr(sliding_module, "_sliding_window_inference", fake)
    x = torch.zeros(1, 1, 8, 8, 8)
    with caplog.at_level(logging.WARNING, logger="CalibSegLib.inference.sliding"):
        out, info = sliding_module.sliding_window(x, nn.Identity(), (8, 8, 8), sw_batch_size=8,
                                                  cuda=True)
    assert [c[0] for c in calls] == [8, 4, 2, 1, 1] and calls[-1][1] == "cpu"
    assert info["sw_batch_size"] == 1 and info["stitch_device"] == "cpu" and info["retries"] == 4
    assert sum("out of memory" in r.message for r in caplog.records) == 4

    def always(inputs, roi_size, sw_batch_size, predictor, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(sliding_module, "_sliding_window_inference", always)
    with pytest.raises(CalibSegError, match="--device cpu"):
        sliding_module.sliding_window(x, nn.Identity(), (8, 8, 8), sw_batch_size=2, cuda=True)

    def cpu_oom(inputs, roi_size, sw_batch_size, predictor, **kwargs):
        calls.append((sw_batch_size, str(kwargs["device"])))
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")

    calls.clear()
    monkeypatch.setattr(sliding_module, "_sliding_window_inference", cpu_oom)
    with pytest.raises(CalibSegError, match="Out of memory"):
        sliding_module.sliding_window(x, nn.Identity(), (8, 8, 8), sw_batch_size=4)
    assert calls == [(4, "None")]  # no CUDA retries on a CPU run


def test_device_choice():
    from CalibSegLib.inference import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CalibSegError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(CalibSegError, match="Unknown device"):
        resolve_device("tpu-please")


@pytest.mark.parametrize("num_classes", [1, 2, 3, 12])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_fused_cpu_maps_equal_the_definitions(num_classes, temperature):
    from CalibSegLib.inference.prediction import probability_maps, probability_maps_torch

    rng = np.random.default_rng(num_classes)
    logits = (rng.standard_normal((num_classes, 9, 50, 31)) * 6).astype(np.float32)
    logits[:, 0, 0, :3] = [[1e4], [-1e4], [3e3]][:num_classes] if num_classes <= 3 else 0.0
    tensor = torch.from_numpy(logits)
    probs, confidence, entropy = probability_maps(tensor, temperature)
    reference = torch.softmax(tensor.double() / temperature, dim=0)
    log_p = torch.log_softmax(tensor.double() / temperature, dim=0)
    expected_entropy = -(reference * log_p).sum(0) / (np.log(num_classes) if num_classes > 1 else 1)
    np.testing.assert_allclose(probs.numpy(), reference.numpy(), atol=2e-6)
    np.testing.assert_allclose(confidence.numpy(), reference.amax(0).numpy(), atol=2e-6)
    np.testing.assert_allclose(entropy.numpy(), expected_entropy.clamp(0, 1).numpy(), atol=2e-5)
    assert probs.dtype == confidence.dtype == entropy.dtype == torch.float32
    # the torch formulation (used on CUDA) gives the same maps
    torch_maps = probability_maps_torch(tensor, temperature)
    for ours, theirs in zip((probs, confidence, entropy), torch_maps):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-5)
