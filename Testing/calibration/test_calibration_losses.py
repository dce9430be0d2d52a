"""mL1-ACE losses and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from CalibSegLib.calibration import (
    DiceCEL1ACELoss,
    HardL1ACELoss,
    ReliabilityStats,
    SoftL1ACELoss,
    apply_temperature_to_logits,
    default_temperature_grid,
    fit_temperature,
    fit_temperature_from_grid,
    nll_over_temperature_grid,
)

B = 20


def batch(seed=0, b=2, c=3, shape=(6, 5, 4), sharp=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn((b, c) + shape, generator=g) * sharp).to(dtype)
    labels = torch.randint(0, c, (b, 1) + shape, generator=g)
    return logits, labels


def test_hard_loss_equals_marginal_ace_per_image():
    from monai.metrics import CalibrationErrorMetric

    logits, labels = batch(0)
    loss = HardL1ACELoss(n_bins=B, include_background=True, to_onehot_y=True, softmax=True,
                         reduction="none", ignore_empty_classes=False)
    values = loss(logits, labels).detach().numpy()
    probs = torch.softmax(logits, 1)
    for i in range(2):
        s = ReliabilityStats.from_probs(probs[i].numpy(), labels[i, 0].numpy(), B)
        m = s.metrics(include_background=True, ignore_empty_classes=False)
        got = [m.per_class[n].ace for n in s.names()]
        np.testing.assert_allclose(values[i].ravel(), got, rtol=1e-5, atol=1e-6)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    metric = CalibrationErrorMetric(num_bins=B, calibration_reduction="average")
    metric(y_pred=probs, y=onehot)
    mean = HardL1ACELoss(n_bins=B, to_onehot_y=True, softmax=True, ignore_empty_classes=False)
    assert float(mean(logits, labels)) == pytest.approx(float(metric.aggregate()), rel=1e-5)


def test_ignore_empty_classes_counts_zero_but_stays_in_mean():
    logits, labels = batch(1, b=1)
    labels = torch.where(labels == 2, 0, labels)
    per = HardL1ACELoss(to_onehot_y=True, softmax=True, reduction="none")(logits, labels)
    assert float(per.view(-1)[2]) == 0.0
    mean = HardL1ACELoss(to_onehot_y=True, softmax=True)(logits, labels)
    assert float(mean) == pytest.approx(float(per.sum()) / 3)


@pytest.mark.parametrize("cls", [HardL1ACELoss, SoftL1ACELoss])
def test_gradients_finite_and_gradcheck(cls):
    logits, labels = batch(2, b=2, c=3, shape=(3, 2, 2), dtype=torch.float64)
    logits.requires_grad_(True)
    loss = cls(n_bins=5, to_onehot_y=True, softmax=True)
    value = loss(logits, labels)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    x = logits.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (x,), eps=1e-6, atol=1e-5)


def test_hard_loss_decreases_when_p_moves_towards_frequency():
    logits, labels = batch(3, b=1, c=2, shape=(8, 8, 4))
    probs = torch.softmax(logits, 1).requires_grad_(True)
    loss = HardL1ACELoss(n_bins=B, to_onehot_y=True, include_background=True)
    before = loss(probs, labels)
    before.backward()
    with torch.no_grad():
        stepped = probs - 1e-4 * probs.grad
    assert float(loss(stepped, labels)) < float(before.detach())


def test_soft_loss_limits():
    # perfectly separated, confident predictions: both losses are ~0
    labels = torch.randint(0, 2, (1, 1, 4, 4, 4), generator=torch.Generator().manual_seed(4))
    onehot = torch.nn.functional.one_hot(labels[:, 0], 2).permute(0, 4, 1, 2, 3).double()
    for cls in (HardL1ACELoss, SoftL1ACELoss):
        assert float(cls(to_onehot_y=True)(onehot, labels)) == pytest.approx(0.0, abs=1e-12)
    # constant p = 0.5 for a balanced binary target: gap 0 in both
    p = torch.full_like(onehot, 0.5)
    y = torch.zeros_like(onehot)
    y[:, 0, ::2] = 1
    y[:, 1] = 1 - y[:, 0]
    assert float(SoftL1ACELoss()(p, y)) == pytest.approx(0.0, abs=1e-12)
    # soft binning spreads weight: values stay in [0, 1] and close to the hard one on smooth data
    logits, labels = batch(5, b=2, c=3, shape=(16, 16, 8), sharp=1.0)
    hard = float(HardL1ACELoss(to_onehot_y=True, softmax=True)(logits, labels))
    soft = float(SoftL1ACELoss(to_onehot_y=True, softmax=True)(logits, labels))
    assert 0.0 <= soft <= 1.0 and abs(soft - hard) < 0.1


def test_dice_ce_ace_combination():
    from monai.losses import DiceCELoss

    logits, labels = batch(6)
    combined = DiceCEL1ACELoss(ace="soft", lambda_ace=0.3)
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels) + 0.3 * SoftL1ACELoss(
        to_onehot_y=True, softmax=True)(logits, labels)
    assert float(combined(logits, labels)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("binning", ["none", "hard", "soft"])
def test_training_objective_is_the_one_dice_ce_ace_loss(binning):
    from monai.losses import DiceCELoss

    from CalibSegLib.training.config import TrainConfig
    from CalibSegLib.training.losses import SegmentationObjective

    logits, labels = batch(7)
    config = TrainConfig(calibration_loss=binning, calibration_weight=0.4, bins=15)
    total, logged = SegmentationObjective(config)(logits, labels)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    expected = dice_ce
    if binning != "none":
        cls = HardL1ACELoss if binning == "hard" else SoftL1ACELoss
        ace = cls(n_bins=15, to_onehot_y=True, softmax=True)(logits, labels)
        expected = dice_ce + 0.4 * ace
        assert logged["ace"] == pytest.approx(float(ace), rel=1e-6)
    else:
        assert "ace" not in logged
    assert logged["dicece"] == pytest.approx(float(dice_ce), rel=1e-6)
    assert float(total) == pytest.approx(float(expected), rel=1e-6)


# ----------------------------------------------------------------------------- temperature
def synthetic_logits(t_true, n=60_000, c=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((c, n)) * 3.0
    p = np.exp(z / t_true - (z / t_true).max(0))
    p /= p.sum(0)
    u = rng.random(n)
    labels = (u[None] > np.cumsum(p, 0)).sum(0)
    return z.astype(np.float32).reshape(c, n, 1, 1), labels.reshape(n, 1, 1)


@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_fit_temperature_recovers_known_t_and_keeps_argmax(t_true):
    z, y = synthetic_logits(t_true)
    t = fit_temperature(z, y, max_voxels=40_000)
    assert t == pytest.approx(t_true, rel=0.06)
    before = z.argmax(0)
    after = apply_temperature_to_logits(z, t).argmax(0)
    assert np.array_equal(before, after)


def test_grid_fit_equals_central_fit_on_pooled_sites():
    z, y = synthetic_logits(1.7, n=30_000, seed=1)
    grid = default_temperature_grid()
    sums_a, na = nll_over_temperature_grid(z[:, :10_000], y[:10_000], grid)
    sums_b, nb = nll_over_temperature_grid(z[:, 10_000:], y[10_000:], grid)
    pooled = fit_temperature_from_grid(sums_a + sums_b, grid)
    central_sums, n = nll_over_temperature_grid(z, y, grid)
    assert na + nb == n
    np.testing.assert_allclose(sums_a + sums_b, central_sums, rtol=1e-10)
    assert pooled == pytest.approx(fit_temperature_from_grid(central_sums, grid), rel=1e-9)
    assert pooled == pytest.approx(fit_temperature(z, y, max_voxels=0), rel=0.01)


def test_temperature_errors():
    from CalibSegLib.errors import CalibSegError

    z, y = synthetic_logits(1.0, n=100)
    with pytest.raises(CalibSegError):
        fit_temperature(z, y[:50])
    with pytest.raises(CalibSegError):
        fit_temperature(z, y + 10)
    with pytest.raises(CalibSegError):
        apply_temperature_to_logits(z, 0.0)
