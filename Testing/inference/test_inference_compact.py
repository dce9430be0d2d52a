"""predict(form="compact") against predict(form="full") on the same model; the members valid
in both forms; apply_temperature on both forms; the "auto" choice; progress and cancel."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from doubles import OutOfGpuMemoryAbove
from torch import nn

from CalibSegLib.calibration import ReliabilityStats
from CalibSegLib.errors import CalibSegError, Cancelled
from CalibSegLib.inference import apply_temperature, compact_logits, predict, stats_from_topk
from CalibSegLib.models import Model, new_card

#: float16 rounding of the stored gaps (docs/bench/compact.md).
U = 2.0 ** -11
PREDICT_MODULE = importlib.import_module("CalibSegLib.inference.predict")
METRICS = ("ece", "marginal_ece", "mean_dice", "nll", "brier")


class _Nearest(nn.Module):
    """Logits ``-sharpness (x - c)^2 + bias_c`` for classes ``c = 0..C-1``, optionally
    returned as probabilities or log-probabilities: a segmentation-like output whose
    winner is the class nearest the voxel value."""

    def __init__(self, num_classes: int, kind: str = "logits", sharpness: float = 3.0) -> None:
        super().__init__()
        self.num_classes, self.kind, self.sharpness = num_classes, kind, sharpness
        self.bias = nn.Parameter(torch.linspace(0.0, 0.3, num_classes), requires_grad=False)
        # a small 3x3x3 smoothing so windows and blending matter
        self.smooth = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.smooth.weight.fill_(1.0 / 27.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = 0.5 * x + 0.5 * self.smooth(x)
        centres = torch.arange(self.num_classes, dtype=x.dtype, device=x.device)
        z = -self.sharpness * (value - centres.reshape(1, -1, 1, 1, 1)) ** 2
        z = z + self.bias.reshape(1, -1, 1, 1, 1)
        if self.kind == "probabilities":
            return torch.softmax(z, dim=1)
        if self.kind == "log_probabilities":
            return torch.log_softmax(z, dim=1)
        return z


def _model(num_classes: int, kind: str = "logits", axis_order: str = "ZYX",
           spacing=(4.0, 4.0, 4.0), patch=(32, 24, 16)) -> Model:
    names = ["background"] + [f"class {i}" for i in range(1, num_classes)]
    card = new_card("nearest", names, head="linear", spacing_mm=spacing, patch_size=patch,
                    normalization={"type": "none"}, output_kind=kind, axis_order=axis_order)
    return Model(card=card, network=_Nearest(num_classes, kind))


def _volume(num_classes: int, shape=(26, 30, 22), seed: int = 0):
    """A smooth volume of values in [0, C-1] (blobs) and its 3 mm anisotropic affine."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(0, 1, s) for s in shape), indexing="ij")
    field = (np.sin(5 * zz + 1) + np.cos(7 * yy) * np.sin(3 * xx + 2) + 0.3 * zz * xx)
    field = (field - field.min()) / (field.max() - field.min()) * (num_classes - 1)
    volume = (field + rng.normal(scale=0.15, size=shape)).astype(np.float32)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-40.0, 12.0, 3.0]
    reference = np.clip(np.rint(field + rng.normal(scale=0.4, size=shape)), 0,
                        num_classes - 1).astype(np.int64)
    return volume, affine, reference


def _reference(prediction, seed: int = 0) -> np.ndarray:
    """Reference labels: the prediction's labels, a neighbouring class at 15 % of voxels
    (the model errs between adjacent classes, as a segmentation network does)."""
    rng = np.random.default_rng(seed)
    labels = prediction.labels.astype(np.int64)
    step = rng.choice([-1, 1], size=labels.shape) * (rng.random(labels.shape) < 0.15)
    return np.clip(labels + step, 0, prediction.num_classes - 1)


def _metrics(stats: ReliabilityStats) -> dict:
    m = stats.metrics()
    return m if isinstance(m, dict) else m.to_dict()


def _compare(full, compact, reference, temperatures=(0.5, 1.0, 2.0)) -> None:
    assert not full.is_compact and compact.is_compact
    assert compact.logits is None and compact.probs is None
    assert compact.info["form"] == "compact" and full.info["form"] == "full"
    assert compact.shape == full.shape and compact.num_classes == full.num_classes
    np.testing.assert_array_equal(compact.labels, full.labels)
    k = compact.scores.k
    bound = 2 * U * (1 / np.e + np.log(k)) + 1e-5
    tail = compact.num_classes > k
    if not tail:  # every logit stored: probabilities within the rounding bound
        np.testing.assert_allclose(compact.confidence, full.confidence, atol=bound)
        for c in range(full.num_classes):
            np.testing.assert_allclose(compact.class_probability(c), full.class_probability(c),
                                       atol=bound)
    for t in temperatures:
        a = _metrics(apply_temperature(full, t).reliability_stats(reference))
        b = _metrics(apply_temperature(compact, t).reliability_stats(reference))
        for name in METRICS:
            assert abs(a[name] - b[name]) <= 1e-3, (t, name, a[name], b[name])


@pytest.mark.parametrize("num_classes,kind,axis_order", [
    (4, "logits", "ZYX"),
    (3, "probabilities", "ZYX"),
    (5, "logits", "XYZ"),
])
def test_compact_predict_equals_full(num_classes, kind, axis_order):
    volume, affine, reference = _volume(num_classes)
    model = _model(num_classes, kind, axis_order)
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    reference = _reference(full)
    assert compact.info["streamed"] and not compact.info["resampled"]
    _compare(full, compact, reference)
    # the compact form equals the compaction of the full path's logits
    direct = compact_logits(full.logits)
    np.testing.assert_array_equal(compact.scores.indices, direct.indices)
    np.testing.assert_allclose(compact.scores.gaps.astype(np.float32),
                               direct.gaps.astype(np.float32), atol=4e-3)


def test_log_probability_output_single_window():
    # log-probabilities blended across overlapping windows do not stay normalised (the
    # full path's output check refuses them), so one window covers the volume here
    volume, affine, reference = _volume(3, shape=(20, 22, 18))
    model = _model(3, "log_probabilities", "XYZ", patch=(32, 32, 32))
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    reference = _reference(full)
    _compare(full, compact, reference)


def test_compact_predict_on_a_resampled_grid():
    volume, affine, reference = _volume(4)
    model = _model(4, spacing=(5.0, 6.0, 5.5), patch=(16, 16, 16))
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    reference = _reference(full)
    assert compact.info["resampled"] and not compact.info["streamed"]
    _compare(full, compact, reference)


def test_25_classes_within_the_documented_bounds():
    volume, affine, reference = _volume(25, shape=(24, 28, 20), seed=3)
    model = _model(25, patch=(16, 16, 16))
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    reference = _reference(full)
    assert compact.scores.bytes_per_voxel <= 16
    assert compact.nbytes < full.nbytes / 5
    _compare(full, compact, reference, temperatures=(0.5, 1.0, 1.7, 3.0))
    # a top-K class's probability within the rounding bound plus the tail-mass interval
    estimate, low, high = compact.scores.tail_bounds()
    for c in (0, 7, 24):
        in_top = (compact.scores.indices == c).any(0)
        err = np.abs(compact.class_probability(c) - full.class_probability(c))
        allowed = 2 * U * (1 / np.e + np.log(4)) + (high - low) + 1e-5
        assert np.all(err[in_top] <= allowed[in_top]), c
        assert np.all(err[~in_top] <= high[~in_top] + 1e-5), c


def test_members_valid_in_both_forms():
    volume, affine, reference = _volume(4)
    model = _model(4)
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    reference = _reference(full)
    region = (slice(3, 5), slice(None), 7)
    for p in (full, compact):
        assert p.probabilities(region).shape == (4, 2, full.shape[1])
        assert p.class_probability(1, region).dtype == np.float32
        labels, confidence, entropy = p.maps(None, (5,))
        np.testing.assert_array_equal(labels, p.labels[5])
        np.testing.assert_array_equal(confidence, p.confidence[5])
        with pytest.raises(CalibSegError, match="out of range"):
            p.class_probability(4)
    # maps of one plane at another temperature equal that plane of the full-volume maps
    for p in (full, compact):
        hot = apply_temperature(p, 2.3)
        labels, confidence, entropy = p.maps(2.3, (slice(None), 11))
        np.testing.assert_array_equal(labels, hot.labels[:, 11])
        np.testing.assert_allclose(confidence, hot.confidence[:, 11], atol=1e-6)
        np.testing.assert_allclose(entropy, hot.entropy[:, 11], atol=1e-6)
    grid = np.array([0.5, 0.8, 1.0, 1.5, 2.5])
    a, n = full.nll_over_temperatures(reference, grid)
    b, m = compact.nll_over_temperatures(reference, grid)
    assert n == m == reference.size
    np.testing.assert_allclose(b / m, a / n, atol=1e-3)


def test_nll_over_temperatures_with_tail_classes():
    volume, affine, reference = _volume(25, shape=(16, 18, 14), seed=5)
    model = _model(25, patch=(16, 16, 16))
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    reference = _reference(full)
    grid = np.array([0.5, 1.0, 2.0, 3.0])
    mask = reference > 0
    a, n = full.nll_over_temperatures(reference, grid, mask=mask)
    b, m = compact.nll_over_temperatures(reference, grid, mask=mask)
    assert n == m == int(mask.sum())
    np.testing.assert_allclose(b / m, a / n, atol=1e-3)


def test_apply_temperature_both_forms():
    volume, affine, _ = _volume(5)
    model = _model(5)
    full = predict(volume, affine, model, device="cpu", form="full")
    compact = predict(volume, affine, model, device="cpu", form="compact")
    seen: list[float] = []
    hot = apply_temperature(compact, 1.8, progress=lambda f, m="": seen.append(f))
    assert hot.is_compact and hot.temperature == 1.8 and hot.scores.temperature == 1.8
    assert hot.scores.indices is compact.scores.indices and hot.labels is compact.labels
    assert seen == sorted(seen) and seen[-1] == 1.0
    confidence, entropy = compact.scores.maps(1.8)
    np.testing.assert_array_equal(hot.confidence, confidence)
    np.testing.assert_array_equal(hot.entropy, entropy)
    assert compact.temperature == 1.0  # unchanged
    back = apply_temperature(hot, 1.0)
    np.testing.assert_allclose(back.confidence, compact.confidence, atol=1e-6)
    z = full.logits.astype(np.float64) / 1.8
    p = np.exp(z - z.max(0))
    p /= p.sum(0)
    full_hot = apply_temperature(full, 1.8)
    np.testing.assert_allclose(full_hot.probs, p, atol=1e-5)
    assert full_hot.probs.dtype == np.float32
    with pytest.raises(Cancelled):
        apply_temperature(compact, 2.0, cancel=lambda: True)
    with pytest.raises(CalibSegError, match="positive"):
        apply_temperature(compact, 0.0)


def test_auto_form_follows_the_budget(monkeypatch):
    volume, affine, _ = _volume(3, shape=(12, 14, 10))
    model = _model(3, patch=(16, 16, 16))
    assert predict(volume, affine, model, device="cpu").info["form"] == "full"
    # just below what the full form would need: compact
    monkeypatch.setattr(PREDICT_MODULE, "FULL_PRECISION_BUDGET_BYTES", 8 * 3 * volume.size - 1)
    auto = predict(volume, affine, model, device="cpu")
    assert auto.info["form"] == "compact" and auto.is_compact
    with pytest.raises(CalibSegError, match="Unknown prediction form"):
        predict(volume, affine, model, device="cpu", form="small")


def test_compact_progress_and_cancel():
    volume, affine, _ = _volume(4)
    model = _model(4, patch=(8, 16, 16))
    seen: list[float] = []
    predict(volume, affine, model, device="cpu", form="compact",
            progress=lambda f, m="": seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 5
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        predict(volume, affine, model, device="cpu", form="compact", cancel=cancel)


def test_compact_output_checks():
    volume, affine, _ = _volume(3, shape=(12, 14, 10))
    # probabilities declared as logits: refused as on the full path
    model = _model(3, "logits", patch=(16, 16, 16))
    model.network.kind = "probabilities"
    for form in ("full", "compact"):
        with pytest.raises(CalibSegError, match="already probabilities"):
            predict(volume, affine, model, device="cpu", form=form)
    # logits declared as probabilities
    model = _model(3, "probabilities", patch=(16, 16, 16))
    model.network.kind = "logits"
    for form in ("full", "compact"):
        with pytest.raises(CalibSegError, match="output_kind 'probabilities'"):
            predict(volume, affine, model, device="cpu", form=form)


def test_soft_reference_from_topk_is_one_clear_error():
    logits = np.random.default_rng(1).normal(size=(6, 4, 5, 3)).astype(np.float32)
    scores = compact_logits(logits)
    labels = logits.argmax(0)
    with pytest.raises(CalibSegError, match="soft"):
        stats_from_topk(scores, labels, reference_probs=np.full(logits.shape, 1 / 6))
    with pytest.raises(CalibSegError, match="soft"):
        stats_from_topk(scores, labels + 0.25)
    # integer-valued float labels are fine
    stats_from_topk(scores, labels.astype(np.float32))


def test_prototype_model_with_maps_stays_full(tmp_path):
    from CalibSegLib.models import load_model
    from CalibSegLib.models.testing import tiny_model

    model = load_model(tiny_model(str(tmp_path / "proto"), seed=2))
    volume, affine, _ = _volume(3, shape=(16, 18, 14))
    p = predict(volume, affine, model, device="cpu", form="compact")
    assert not p.is_compact and p.info["form"] == "full" and p.similarity is not None
    plain = predict(volume, affine, model, device="cpu", form="compact", maps=False)
    assert plain.is_compact and plain.similarity is None
    np.testing.assert_array_equal(plain.labels, p.labels)


def test_compact_predict_retries_cuda_out_of_memory_with_smaller_window_batches():
    volume, affine, _ = _volume(5)
    model = _model(5, patch=(8, 16, 16))
    # the same windows one at a time, uninterrupted: the same network calls, so equal bits
    whole = predict(volume, affine, model, device="cpu", form="compact", sw_batch_size=1)
    assert whole.info["retries"] == 0
    model.network = OutOfGpuMemoryAbove(model.network, limit=1)
    retried = predict(volume, affine, model, device="cpu", form="compact", sw_batch_size=4)
    assert retried.info["retries"] == 2 and retried.info["sw_batch_size"] == 1
    assert model.network.batches[:2] == [4, 2]
    assert len(model.network.batches) == 2 + retried.info["windows"]
    assert retried.is_compact and retried.scores is not None and whole.scores is not None
    for name in ("indices", "gaps", "tail"):
        np.testing.assert_array_equal(getattr(retried.scores, name),
                                      getattr(whole.scores, name), err_msg=name)
    for name in ("labels", "confidence", "entropy"):
        np.testing.assert_array_equal(getattr(retried, name), getattr(whole, name),
                                      err_msg=name)
    # one window at a time still too much: one clear error naming what to do
    model.network.limit = 0
    with pytest.raises(CalibSegError, match="--device cpu") as raised:
        predict(volume, affine, model, device="cpu", form="compact", sw_batch_size=2)
    assert "\n" not in str(raised.value)
