"""What a network's output channels are: detected on import, checked at prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from doubles import WithHead
from monai.networks.nets import UNet
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import predict
from CalibSegLib.models import Model, load_model
from CalibSegLib.models.importers import import_model
from CalibSegLib.models.output_kind import (
    PROBABILITY_FLOOR,
    check_output,
    detect_output_kind,
    to_logits,
)


def _Head(head: str, channels: int = 3, seed: int = 0) -> nn.Module:
    """A small U-Net (weights from ``seed``) ending in ``head``."""
    torch.manual_seed(seed)
    return WithHead(UNet(spatial_dims=3, in_channels=1, out_channels=channels, channels=(4, 8),
                         strides=(2,), num_res_units=0), head)


@pytest.mark.parametrize("head,kind", [("none", "logits"), ("softmax", "probabilities"),
                                       ("log_softmax", "log_probabilities")])
def test_detected_from_the_network_on_a_sample(head, kind):
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert detect_output_kind(_Head(head).eval()(x)) == kind


@pytest.mark.parametrize("head,kind", [("none", "logits"), ("softmax", "probabilities"),
                                       ("log_softmax", "log_probabilities")])
def test_import_records_the_kind_and_the_flag_overrides(tmp_path, head, kind):
    path = str(tmp_path / "net.ts")
    torch.jit.save(torch.jit.script(_Head(head).eval()), path)
    card = import_model(path, str(tmp_path / "a"), patch_size=[8, 8, 8])
    assert card.output_kind == kind
    assert any(f"output_kind {kind} detected" in n for n in card.review_notes)
    if kind == "logits":
        return
    # Overriding with the kind it is: recorded as given.
    given = import_model(path, str(tmp_path / "b"), patch_size=[8, 8, 8], output_kind=kind)
    assert given.output_kind == kind and any("given on import" in n for n in given.review_notes)
    if kind == "probabilities":
        # Overriding with logits would apply the softmax twice: refused, nothing written.
        with pytest.raises(CalibSegError, match="already probabilities"):
            import_model(path, str(tmp_path / "c"), patch_size=[8, 8, 8],
                         output_kind="logits")
        assert not (tmp_path / "c").exists()
    else:
        # Log-probabilities read as logits are harmless: softmax(log p) = p.
        import_model(path, str(tmp_path / "c"), patch_size=[8, 8, 8], output_kind="logits")


def test_sigmoid_outputs_are_refused_unless_overridden(tmp_path):
    path = str(tmp_path / "net.ts")
    torch.jit.save(torch.jit.script(_Head("sigmoid").eval()), path)
    with pytest.raises(CalibSegError, match="do not sum to 1"):
        import_model(path, str(tmp_path / "a"), patch_size=[8, 8, 8])
    assert not (tmp_path / "a").exists()
    card = import_model(path, str(tmp_path / "b"), patch_size=[8, 8, 8], output_kind="logits")
    assert card.output_kind == "logits"


def test_logits_from_probabilities_and_log_probabilities():
    p = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]]).T[None]  # (1, 3, 2), a zero in it
    logits = to_logits(p, "probabilities")
    assert torch.isfinite(logits).all()
    assert float(logits.min()) == pytest.approx(math.log(PROBABILITY_FLOOR), rel=1e-6)
    torch.testing.assert_close(torch.softmax(logits, dim=1), p, atol=1e-7, rtol=0)
    log_p = torch.log(p)  # -inf where p = 0
    torch.testing.assert_close(to_logits(log_p, "log_probabilities"), logits)
    z = torch.randn(1, 3, 5)
    assert to_logits(z, "logits") is z
    # Temperature on log p equals temperature on the logits the probabilities came from.
    for t in (0.5, 2.0, 4.0):
        torch.testing.assert_close(
            torch.softmax(to_logits(torch.softmax(z, 1), "probabilities") / t, 1),
            torch.softmax(z / t, 1), atol=1e-6, rtol=0)


def test_check_output_names_the_problem():
    p = torch.softmax(torch.randn(1, 3, 4, 4, 4), dim=1)
    check_output(p, "probabilities")
    with pytest.raises(CalibSegError, match="already probabilities"):
        check_output(p, "logits")
    with pytest.raises(CalibSegError, match="summing to 1"):
        check_output(p * 0.5, "probabilities")
    with pytest.raises(CalibSegError, match="exp\\(output\\)"):
        check_output(torch.log(p) + 1.0, "log_probabilities")
    one_hot = (p == p.amax(dim=1, keepdim=True)).float()  # sums to 1 with exact zeros
    check_output(torch.log(one_hot), "log_probabilities")  # log 0 = -inf is allowed
    bad = p.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibSegError, match="NaN"):
        check_output(bad, "probabilities")


def test_prediction_refuses_a_card_whose_kind_is_wrong(tmp_path):
    path = str(tmp_path / "net.ts")
    torch.jit.save(torch.jit.script(_Head("softmax").eval()), path)
    import_model(path, str(tmp_path / "m"), patch_size=[8, 8, 8], spacing_mm=[2.0, 2.0, 2.0])
    model = load_model(str(tmp_path / "m"))
    volume = np.random.default_rng(0).normal(size=(8, 12, 10)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    good = predict(volume, affine, model, device="cpu")
    assert np.allclose(good.probs.sum(axis=0), 1.0, atol=1e-5)
    wrong = Model(card=model.card.replace(output_kind="logits"), network=model.network)
    with pytest.raises(CalibSegError, match="output_kind 'logits'.*already probabilities"):
        predict(volume, affine, wrong, device="cpu")
    wrong = Model(card=model.card.replace(output_kind="log_probabilities"),
                  network=model.network)
    with pytest.raises(CalibSegError, match="log_probabilities"):
        predict(volume, affine, wrong, device="cpu")
