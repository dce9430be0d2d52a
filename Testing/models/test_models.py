"""Model cards, networks and model folders."""

from __future__ import annotations

import copy
import glob
import json
import os

import numpy as np
import pytest
import torch

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import (
    ModelCard,
    PrototypeSegNet,
    build_network,
    load_model,
    new_card,
    normalize_intensity,
    normalizer,
    save_model,
)
from CalibSegLib.models.testing import tiny_model


def _good_card() -> dict:
    card = new_card("brain", ["background", "grey matter", "white matter"], head="prototype",
                    channels=(4, 8, 16), feature_size=8, prototypes_per_class=2,
                    patch_size=(32, 32, 32), spacing_mm=(4.0, 4.0, 4.0),
                    training={"loss": "DiceCE+HardL1ACE", "weights": {"dice_ce": 1, "ace": 0.5}})
    data = card.to_dict()
    data["prototypes"] = [{"index": 0, "class": 0, "case": "mni-t1", "voxel": [1, 2, 3],
                           "bbox": [[0, 4], [0, 4], [0, 4]], "gallery": "gallery/proto_000.nii.gz"}]
    return data


def test_good_card_round_trip():
    card = ModelCard(_good_card())
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert card.class_names == ("background", "grey matter", "white matter")
    assert card.num_prototypes == 6 and card.is_prototype
    assert card.temperature == 1.0 and card.spacing_mm == (4.0, 4.0, 4.0)
    assert card.replace(temperature=1.5).temperature == 1.5 and card.temperature == 1.0


def _set(data: dict, path: list, value) -> dict:
    data = copy.deepcopy(data)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()

BAD_FIELDS = [
    (["format_version"], 3, "format_version"),
    (["name"], "", "name"),
    (["name"], _DELETE, "name"),
    (["classes"], [{"name": "only", "color": [0, 0, 0]}], "classes"),
    (["classes", 1, "color"], [1.0, 0.5], "classes[1].color"),
    (["classes", 2, "color"], [1.0, 0.5, 2.0], "classes[2].color[2]"),
    (["spacing_mm"], [1.0, -1.0, 1.0], "spacing_mm[1]"),
    (["orientation"], "RRS", "orientation"),
    (["preprocessing", 0, "transform"], "Lambda", "preprocessing[0].transform"),
    (["preprocessing", 0, "args"], {"nonzero": "yes"}, "preprocessing[0].args.nonzero"),
    (["preprocessing", 0, "args"], {"dtype": "float16"}, "preprocessing[0].args.dtype"),
    (["preprocessing", 0, "args"], {"func": "$print"}, "preprocessing[0].args.func"),
    (["axis_order"], "YXZ", "axis_order"),
    (["output_kind"], "softmax", "output_kind"),
    (["sliding_window"], {"mode": "median"}, "sliding_window.mode"),
    (["patch_size"], [32, 32], "patch_size"),
    (["patch_size"], [30, 32, 32], "patch_size"),
    (["network", "architecture"], "resnet", "network.architecture"),
    (["network", "channels"], "many", "network.channels"),
    (["network", "strides"], [2], "network.strides"),
    (["network", "dropout"], 1.5, "network.dropout"),
    (["head", "type"], "knn", "head.type"),
    (["head", "prototypes_per_class"], 0, "head.prototypes_per_class"),
    (["temperature"], 0.0, "temperature"),
    (["temperature"], "hot", "temperature"),
    (["prototypes", 0, "voxel"], [1, 2], "prototypes[0].voxel"),
    (["prototypes", 0, "index"], 99, "prototypes[0].index"),
    (["prototypes", 0, "class"], 7, "prototypes[0].class"),
]


@pytest.mark.parametrize("path,value,field", BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (_, _, f) in enumerate(BAD_FIELDS)])
def test_bad_field_is_named(path, value, field):
    with pytest.raises(CalibSegError) as info:
        ModelCard(_set(_good_card(), path, value))
    assert f"'{field}'" in str(info.value)


def test_card_input_not_modified():
    data = _good_card()
    snapshot = copy.deepcopy(data)
    card = ModelCard(data)
    card.to_dict()["name"] = "changed"
    assert data == snapshot and card.name == "brain"


@pytest.mark.parametrize("head", ["prototype", "linear"])
def test_safetensors_round_trip(tmp_path, head):
    folder = tiny_model(str(tmp_path / head), head=head, seed=3)
    assert sorted(os.listdir(folder)) == ["model.json", "model.safetensors"]
    model = load_model(folder)
    assert not model.network.training
    assert model.num_classes == 3 and model.is_prototype == (head == "prototype")
    assert model.class_names == ("background", "class 1", "class 2")
    again = save_model(str(tmp_path / "copy"), model.card, model.network)
    reloaded = load_model(again)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.network(x), reloaded.network(x))
    same = load_model(tiny_model(str(tmp_path / "same"), head=head, seed=3))
    with torch.no_grad():
        assert torch.equal(model.network(x), same.network(x))


def test_save_never_overwrites_unless_asked(tmp_path):
    folder = tiny_model(str(tmp_path / "m"), head="linear")
    model = load_model(folder)
    with pytest.raises(CalibSegError, match="already exists.*--overwrite"):
        save_model(folder, model.card, model.network)
    save_model(folder, model.card.replace(temperature=2.0), model.network, overwrite=True,
               extra_files={"train.log": b"step 1\n"})
    assert load_model(folder).temperature == 2.0
    assert os.path.isfile(os.path.join(folder, "train.log"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".calibseg")]


def test_saved_model_folder_has_one_file_mode(tmp_path):
    """Card, weights (safetensors writes 0600) and copied files share one mode."""
    import stat

    folder = tiny_model(str(tmp_path / "m"), head="linear")
    model = load_model(folder)
    save_model(folder, model.card, model.network, overwrite=True,
               extra_files={"gallery/proto_000.txt": b"x"})
    modes = {stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode)
             for base, _, names in os.walk(folder) for name in names}
    umask = os.umask(0)
    os.umask(umask)
    assert modes == {0o666 & ~umask}


def test_save_rejects_card_network_mismatch(tmp_path):
    card = ModelCard(_good_card())
    other = build_network(card.replace(head={"type": "linear", "feature_size": 8}, prototypes=[]))
    with pytest.raises(CalibSegError, match="missing tensors"):
        save_model(str(tmp_path / "bad"), card, other)
    assert not os.listdir(tmp_path)


def test_weights_mismatch_names_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_model(str(tmp_path / "m"))
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    tensors.pop("prototypes")
    tensors["extra.weight"] = torch.zeros(2)
    tensors["last_layer.weight"] = torch.zeros(3, 5, 1, 1, 1)
    save_file(tensors, path)
    with pytest.raises(CalibSegError) as info:
        load_model(folder)
    text = str(info.value)
    assert "prototypes" in text and "extra.weight" in text and "last_layer.weight" in text


def test_load_errors(tmp_path):
    with pytest.raises(CalibSegError, match="does not exist"):
        load_model(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CalibSegError, match="model.json"):
        load_model(str(tmp_path / "empty"))
    folder = tiny_model(str(tmp_path / "m"))
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(b"not a tensor file")
    with pytest.raises(CalibSegError, match="safetensors"):
        load_model(folder)
    with open(os.path.join(folder, "model.json"), "w") as fh:
        fh.write("{broken")
    with pytest.raises(CalibSegError, match="not valid JSON"):
        load_model(folder)


def _proto_net(seed: int = 0) -> PrototypeSegNet:
    torch.manual_seed(seed)
    card = new_card("p", ["a", "b", "c"], channels=(4, 8), strides=(2,), feature_size=5,
                    prototypes_per_class=2, patch_size=(8, 8, 8))
    net = build_network(card)
    with torch.no_grad():
        net.prototypes.normal_()
    return net.eval()


def test_prototype_head_layout():
    net = _proto_net()
    assert net.prototypes.shape == (6, 5)
    assert net.prototype_class.tolist() == [0, 0, 1, 1, 2, 2]
    w = net.class_weights
    assert w.shape == (3, 6) and net.last_layer.bias is None
    own = net.prototype_class[None, :] == torch.arange(3)[:, None]
    assert torch.all(w[own] == 1.0) and torch.all(w[~own] == -0.5)


def test_similarity_matches_direct_formula():
    net = _proto_net(1)
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = net.backbone(x)
        sim = net.similarity_from_features(features)
        f = features.permute(0, 2, 3, 4, 1).reshape(-1, 1, 5).double()  # (N, 1, D)
        d = ((f - net.prototypes.double()[None]) ** 2).sum(-1)  # (N, P) via (N, P, D)
        direct = torch.log((d + 1) / (d + net.epsilon))
    ours = sim.permute(0, 2, 3, 4, 1).reshape(-1, 6).double()
    torch.testing.assert_close(ours, direct, rtol=1e-4, atol=1e-4)


def test_contributions_sum_to_logits():
    net = _proto_net(2)
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps = net.forward_maps(x)
        logits = net(x)
        contributions = net.contributions(maps["similarity"])  # (B, C, P, ...)
    assert contributions.shape == (1, 3, 6, 8, 8, 8)
    assert torch.allclose(contributions.sum(2), logits, atol=1e-5)
    assert torch.allclose(maps["logits"], logits, atol=1e-5)
    winner = logits.argmax(1)
    assert torch.equal(maps["winning_class"], winner)
    assert torch.equal(maps["nearest_prototype"], maps["similarity"].argmax(1))
    own = net.own_class_mask()[winner[0]]  # (Z, Y, X, P)
    expected = (contributions[0].permute(2, 3, 4, 0, 1)
                .gather(3, winner[0][..., None, None].expand(8, 8, 8, 1, 6))[..., 0, :]
                * own).sum(-1)
    assert torch.allclose(maps["winning_contribution"][0], expected, atol=1e-5)


def test_basic_unet_card_builds():
    card = new_card("b", ["a", "b"], head="linear", patch_size=(16, 16, 16)).to_dict()
    card["network"] = {"architecture": "monai.BasicUNet", "features": [4, 4, 8, 8, 16, 4]}
    card["patch_size"] = [32, 32, 32]
    net = build_network(card).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize("spec", [
    {"type": "zscore"}, {"type": "zscore", "nonzero": True},
    {"type": "percentile", "lower": 1, "upper": 99},
    {"type": "range", "a_min": -100, "a_max": 100, "b_min": 0, "b_max": 1}, {"type": "none"},
])
def test_normalization_does_not_modify_input(spec):
    image = np.arange(60, dtype=np.int16).reshape(3, 4, 5) - 10
    before = image.copy()
    out = normalize_intensity(image, spec)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(image, before)
    if spec["type"] == "zscore" and not spec.get("nonzero"):
        assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    if spec["type"] in ("percentile", "range"):
        assert out.min() >= 0 and out.max() <= 1


def test_card_json_is_valid_schema_document():
    import jsonschema

    from CalibSegLib.models import card_schema

    jsonschema.Draft202012Validator.check_schema(card_schema())
    data = json.loads(ModelCard(_good_card()).to_json())
    jsonschema.validate(data, card_schema())


SHIPPED = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "Resources",
                                        "Models", "*", "model.json")))


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(os.path.dirname(p))
                                                for p in SHIPPED])
def test_shipped_format_1_cards_load_unchanged_and_migrate(path):
    with open(path, "rb") as fh:
        before = fh.read()
    original = json.loads(before)
    assert original["format_version"] == 1
    card = ModelCard.from_file(path)
    with open(path, "rb") as fh:
        assert fh.read() == before  # reading never rewrites the file
    assert card.to_dict()["format_version"] == 2
    assert card.axis_order == "ZYX" and card.output_kind == "logits"
    assert card.model_grid == "axis_aligned" and card.preprocessing_grid == "input"
    assert card.output_resampling == "logits" and card.sliding_window["mode"] == "gaussian"
    assert card.normalization == {"type": "zscore", "nonzero": False}
    assert "normalization" not in card.to_dict()
    again = ModelCard.from_json(card.to_json())  # a migrated card saves as format 2
    assert again == card


def _legacy_normalisation(image: np.ndarray, spec: dict) -> np.ndarray:
    """The format-1 normalisations written out in numpy (the rules docs/models.md gave)."""
    x = image.astype(np.float64)
    if spec["type"] == "zscore":
        mask = x != 0 if spec.get("nonzero") else np.ones(x.shape, bool)
        out = (x - x[mask].mean()) / x[mask].std()
        return np.where(mask, out, 0.0)
    if spec["type"] == "none":
        return x
    if spec["type"] == "percentile":
        lo, hi = np.percentile(x, [spec.get("lower", 0.5), spec.get("upper", 99.5)])
    else:
        lo, hi = spec["a_min"], spec["a_max"]
    b_min, b_max = spec.get("b_min", 0.0), spec.get("b_max", 1.0)
    out = (x - lo) / (hi - lo) * (b_max - b_min) + b_min
    return np.clip(out, b_min, b_max) if spec.get("clip", True) else out


@pytest.mark.parametrize("spec", [
    {"type": "zscore"}, {"type": "zscore", "nonzero": True}, {"type": "percentile"},
    {"type": "percentile", "lower": 2, "upper": 97, "b_min": -1, "b_max": 1, "clip": False},
    {"type": "range", "a_min": -20, "a_max": 150}, {"type": "none"},
])
def test_migrated_normalisation_computes_the_format_1_values(spec):
    data = _good_card()
    data.pop("preprocessing")
    data.pop("axis_order")
    data.pop("output_kind")
    data.update(format_version=1, normalization=spec)
    card = ModelCard(data)
    rng = np.random.default_rng(3)
    image = rng.normal(60, 40, size=(9, 10, 11)) * (rng.random((9, 10, 11)) > 0.2)
    out = normalizer(card)(image)
    np.testing.assert_allclose(out, _legacy_normalisation(image, spec), atol=2e-5)


@pytest.mark.parametrize("spec", [
    {"type": "zscore", "nonzero": True}, {"type": "percentile", "lower": 2, "upper": 97},
    {"type": "range", "a_min": -20, "a_max": 150}, {"type": "none"},
])
def test_explanations_normalise_like_prediction(spec):
    """The torch batch normaliser (explanations, with gradients) gives the numpy one's
    numbers, and both the format-1 rule's."""
    from CalibSegLib.models.normalization import torch_normalizer

    rng = np.random.default_rng(5)
    images = rng.normal(60, 40, size=(2, 9, 10, 11)) * (rng.random((2, 9, 10, 11)) > 0.2)
    batch = torch.tensor(images[:, None], dtype=torch.float64, requires_grad=True)
    out = torch_normalizer(spec)(batch)
    assert out.shape == batch.shape and out.dtype == torch.float64
    for b in range(2):
        expected = normalizer(spec)(images[b])
        np.testing.assert_allclose(out[b, 0].detach().numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(expected, _legacy_normalisation(images[b], spec), atol=2e-5)
    np.testing.assert_array_equal(batch.detach().numpy()[:, 0], images)  # input untouched


def test_format_1_card_with_a_bad_normalisation_names_the_field():
    data = _good_card()
    data.pop("preprocessing")
    data.pop("axis_order")
    data.pop("output_kind")
    data.update(format_version=1, normalization={"type": "magic"})
    with pytest.raises(CalibSegError, match="'normalization.type'"):
        ModelCard(data)
    data["normalization"] = {"type": "zscore"}
    data["preprocessing"] = []
    ModelCard(data)  # format 1 with extra format-2 fields: the normalisation wins
    data.update(format_version=2, axis_order="ZYX", output_kind="logits")
    with pytest.raises(CalibSegError, match="'normalization' belongs to format 1"):
        ModelCard(data)


def test_shipped_model_predicts_as_before_the_migration():
    """The migrated card gives the format-1 pipeline's probabilities, written out by hand:
    numpy z-score over the whole volume, MONAI's Gaussian sliding window on (Z, Y, X)
    arrays, softmax of the logits."""
    from monai.inferers import sliding_window_inference

    from CalibSegLib.data import sample_case
    from CalibSegLib.inference import predict

    folder = os.path.dirname(SHIPPED[0])
    model = load_model(folder)
    case = sample_case("mni-t1", resolution_mm=2.0)
    volume = np.ascontiguousarray(case.image[10:58, 20:68, 16:64])  # the model grid, 48³
    affine = case.affine.copy()
    affine[:3, 3] = affine[:3, :4] @ np.array([16.0, 20.0, 10.0, 1.0])
    prediction = predict(volume, affine, model, device="cpu", maps=False)
    assert not prediction.info["resampled"]
    x = volume.astype(np.float64)
    x = ((x - x.mean()) / x.std()).astype(np.float32)
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(x)[None, None], tuple(reversed(model.card.patch_size)), 4,
            model.network, overlap=0.25, mode="gaussian", padding_mode="replicate")
    expected = torch.softmax(torch.as_tensor(logits)[0] / model.card.temperature, 0).numpy()
    np.testing.assert_allclose(prediction.probs, expected, atol=1e-5)
