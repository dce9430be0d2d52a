"""Explanation methods on tiny 3D segmentation networks: grids, decomposition, ranking, I/O."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from CalibSegLib.errors import CalibSegError
from CalibSegLib.explain import (
    Explanation,
    as_segmenter,
    bottleneck_layer,
    default_layer,
    list_layers,
)
from CalibSegLib.explain.api import (
    check_contributions,
    explain,
    random_explanation,
    resolve_class,
    save_explanation,
)
from CalibSegLib.explain.prototype import rank_prototypes

SHAPE = (18, 22, 20)  # not a multiple of the U-Net's divisor on purpose
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


class ToyProtoNet(nn.Module):
    """A U-Net backbone with a prototype head (the interface of CalibSeg's prototype models)."""

    def __init__(self, classes: int = 3, per_class: int = 2, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = UNet(3, 1, dim, channels=(4, 8), strides=(2,), num_res_units=0)
        self.prototypes = nn.Parameter(torch.randn(classes * per_class, dim))
        self.register_buffer("prototype_class", torch.arange(classes).repeat_interleave(per_class))
        self.last_layer = nn.Conv3d(classes * per_class, classes, 1, bias=False)

    def forward_maps(self, x):
        f = self.backbone(x)
        d = ((f[:, None] - self.prototypes[None, :, :, None, None, None]) ** 2).sum(2)
        sim = torch.log((d + 1) / (d + 1e-4))
        return {"logits": self.last_layer(sim), "similarity": sim, "features": f}

    def forward(self, x):
        return self.forward_maps(x)["logits"]


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    return (np.exp(-4 * (x**2 + y**2 + z**2)) + 0.05 * rng.standard_normal(SHAPE)).astype(
        np.float32)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "occlusion"])
def test_posthoc_maps_on_input_grid(unet, image, method):
    before = image.copy()
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in unet.modules())
    e = explain(image, AFFINE, unet, method=method, target_class=1,
                occlusion_options={"mask_size": (6, 6, 6)})
    assert isinstance(e, Explanation) and e.map.shape == SHAPE and e.map.dtype == np.float32
    assert np.all(np.isfinite(e.map)) and np.array_equal(e.affine, AFFINE)
    assert np.array_equal(image, before)
    assert hooks == sum(len(m._forward_hooks) + len(m._backward_hooks) for m in unet.modules())
    if method == "occlusion":
        assert e.upsampling == "none" and e.details["mask_size"] == [6, 6, 6]
    else:
        # default layer: the first decoder stage, at half the padded input's resolution
        assert e.layer == "model.1.submodule.2" and e.map.min() >= 0 and e.map.max() > 0
        assert e.upsampling.startswith("trilinear from feature grid (10, 12, 10)")
    json.dumps(e.to_dict())


def test_layers_helpers(unet):
    layers = list_layers(unet)
    names = [entry["name"] for entry in layers]
    assert "model.1.submodule.1" in names and bottleneck_layer(unet) == "model.1.submodule.1"
    # the up-convolution block after the bottleneck, not the skip connection containing it
    assert default_layer(unet) == "model.1.submodule.2"
    encoder = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, stride=2, padding=1),
                                  torch.nn.Conv3d(4, 3, 1))
    assert default_layer(encoder) == bottleneck_layer(encoder) == "1"  # no decoder: bottleneck
    with pytest.raises(CalibSegError, match="list_layers"):
        explain(np.zeros(SHAPE, np.float32) + 1, AFFINE, unet, "gradcam", 1, layer="nope",
                roi=np.ones(SHAPE))


def test_prototype_contributions_sum_to_logits(image):
    net = ToyProtoNet().eval()
    assert check_contributions(image, net) < 1e-4
    e = explain(image, AFFINE, net, method="prototype", target_class=2, roi=np.ones(SHAPE))
    assert e.map.shape == SHAPE and e.upsampling == "none"
    assert set(e.extras) == {"nearest_prototype", "nearest_similarity",
                             "top_prototype_contribution"}
    assert set(np.unique(e.extras["nearest_prototype"])) <= set(range(6))
    contributions = [p["contribution"] for p in e.prototypes]
    assert contributions == sorted(contributions, reverse=True) and len(e.prototypes) == 6
    assert sum(p["share"] for p in e.prototypes) == pytest.approx(1.0)


def test_rank_prototypes_hand_computed():
    sim = np.zeros((3, 1, 2, 2))
    sim[0] = 1.0
    sim[1, 0, 0, 0] = 5.0
    sim[2] = 2.0
    weight = np.array([[1.0, 1.0, -0.5], [0.0, 2.0, 1.0]])
    region = np.zeros((1, 2, 2), bool)
    region[0, 0, :] = True  # two voxels: sums 2, 5, 4
    catalogue = [{"index": 1, "class": 1, "case": "case-7", "voxel": [1, 2, 3],
                  "bbox": [[0, 4], [0, 4], [0, 4]], "gallery": "gallery/p1.nii.gz"}]
    ranking = rank_prototypes(sim, weight, 1, region, np.array([0, 1, 1]), catalogue,
                              ["bg", "fg"], model_folder="/m")
    assert [r["index"] for r in ranking] == [1, 2, 0]
    assert [r["contribution"] for r in ranking] == [10.0, 4.0, 0.0]
    assert ranking[0]["class_name"] == "fg" and ranking[0]["weight"] == 2.0
    assert ranking[0]["mean_similarity"] == 2.5 and ranking[0]["max_similarity"] == 5.0
    assert ranking[0]["source"] == {"case": "case-7", "voxel": [1, 2, 3],
                                    "bbox": [[0, 4], [0, 4], [0, 4]],
                                    "gallery": os.path.join("/m", "gallery/p1.nii.gz")}
    assert ranking[1]["source"] == {}
    one = rank_prototypes(sim, weight, 0, (0, 0, 0), top=1)
    assert one[0]["index"] == 1 and one[0]["contribution"] == 5.0


def test_explain_with_faithfulness_and_save(unet, image, tmp_path):
    reference = (image > 0.5).astype(np.uint8)
    e = explain(image, AFFINE, unet, "gradcam", target_class=1, faithfulness=True,
                reference=reference,
                faithfulness_options={"steps": 4, "n_blocks": 6, "batch_size": 4})
    f = e.faithfulness
    assert {"explanation", "random", "vs_random", "beats_random", "plausibility"} <= set(f)
    assert isinstance(f["beats_random"], bool)
    r = random_explanation(e, seed=1)
    assert r.method == "random" and np.array_equal(np.sort(r.map.ravel()), np.sort(e.map.ravel()))
    written = save_explanation(e, str(tmp_path), stem="case", suffix=".nrrd")
    assert [os.path.basename(p) for p in written] == ["case_gradcam.nrrd", "case_gradcam.json"]
    meta = json.loads((tmp_path / "case_gradcam.json").read_text())
    assert meta["faithfulness"]["baseline"]["kind"] == "blur" and meta["files"]["map"]
    from CalibSegLib.io import read_image

    array, affine = read_image(written[0])
    np.testing.assert_allclose(array, e.map)
    np.testing.assert_allclose(affine, AFFINE)


def test_user_errors(unet, image):
    with pytest.raises(CalibSegError, match="linear head"):
        explain(image, AFFINE, unet, "prototype")
    with pytest.raises(CalibSegError, match="Unknown class"):
        resolve_class("liver", ["bg", "grey matter"])
    assert resolve_class("Grey Matter", ["bg", "grey matter"]) == 1
    assert resolve_class(None, ["bg", "a", "b"], np.array([0, 0, 2, 2, 1])) == 2
    with pytest.raises(CalibSegError, match="empty"):
        explain(image, AFFINE, unet, "gradcam", roi=np.zeros(SHAPE))
    with pytest.raises(CalibSegError, match="NaN"):
        explain(np.full(SHAPE, np.nan, np.float32), AFFINE, unet)
    with pytest.raises(CalibSegError, match="Unknown method"):
        explain(image, AFFINE, unet, "lime", roi=np.ones(SHAPE))
    assert as_segmenter(unet).divisor == 4


def test_explanation_table_rows(unet, image):
    from CalibSegLib.explain.table import explanation_table, format_table

    labels = (image > 0.4).astype(np.uint8)
    cases = [("a", image, AFFINE, labels), ("b", image[::-1].copy(), AFFINE, labels[::-1])]
    rows = explanation_table(
        [ToyProtoNet().eval(), unet], cases, methods=("prototype", "gradcam"), target_class=1,
        faithfulness_options={"steps": 2, "n_blocks": 4, "random_variants": ("permuted",)})
    keys = [(r["model"], r["method"], r.get("of")) for r in rows]
    assert keys == [("ToyProtoNet", "prototype", None), ("ToyProtoNet", "random", "prototype"),
                    ("ToyProtoNet", "gradcam", None), ("ToyProtoNet", "random", "gradcam"),
                    ("UNet", "gradcam", None), ("UNet", "random", "gradcam")]
    for r in rows:
        assert r["n_cases"] == 2 and np.isfinite(r["deletion_auc_mean"])
        assert r["deletion_auc_sd"] >= 0
    assert "activation_precision_mean" in rows[0] and "beats_random_fraction" in rows[0]
    assert "beats_random_fraction" not in rows[1]
    assert format_table(rows).count("\n") == len(rows) + 1


def test_constant_map_is_flagged(unet, image, monkeypatch):
    import CalibSegLib.explain.api as api

    def flat_gradcam(segmenter, image, c, region, layer, plusplus=False, device="cpu"):
        return np.zeros(np.shape(image), np.float32), {"layer": "model.1", "upsampling": "none"}

    monkeypatch.setattr(api, "gradcam_map", flat_gradcam)
    e = api.explain(image, np.eye(4), unet, "gradcam", 1)
    assert e.details["constant_map"] and "try another layer" in e.details["note"]
    rows = [{"model": "m", "method": "gradcam", "n_cases": 1, "deletion_auc_mean": 0.5,
             "deletion_auc_sd": 0.0, "insertion_auc_mean": 0.5, "insertion_auc_sd": 0.0,
             "correlation_mean": float("nan"), "correlation_sd": float("nan"),
             "beats_random_fraction": 0.0, "constant_maps": 1}]
    from CalibSegLib.explain.table import format_table

    assert "(1 constant map)" in format_table(rows)
