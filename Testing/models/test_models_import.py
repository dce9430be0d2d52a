"""Importing MONAI bundles and TorchScript files; refusing pickles that carry code."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from monai.networks.nets import UNet

from CalibSegLib.errors import CalibSegError
from CalibSegLib.models import load_model
from CalibSegLib.models.importers import import_bundle, import_model, import_torchscript


class _Payload:
    """Unpickling this runs code that writes a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
                num_res_units=0).eval()


def _bundle(root, network_def: dict | None = None, weights=None) -> str:
    folder = root / "bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {
        "imports": ["$import torch"],
        "num_classes": 2,
        "device": "$torch.device('cpu')",
        "network_def": network_def or {
            "_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
            "out_channels": "@num_classes", "channels": [4, 8], "strides": [2],
            "num_res_units": 0,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 3.0]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -50, "a_max": 150,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16]},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {
        "outputs": {"pred": {"num_channels": 2, "channel_def": {"0": "background",
                                                                "1": "lesion"}}}}}))
    if weights is None:
        torch.save(_tiny_unet().state_dict(), folder / "models" / "model.pt")
    else:
        weights(folder / "models" / "model.pt")
    return str(folder)


def test_bundle_import_round_trip(tmp_path):
    source = _bundle(tmp_path)
    folder = str(tmp_path / "imported")
    returned = import_model(source, folder)
    assert sorted(os.listdir(folder)) == ["model.json", "model.safetensors"]
    model = load_model(folder)
    card = model.card
    assert returned == card and card.axis_order == "XYZ" and card.output_kind == "logits"
    assert card.preprocessing == [{"transform": "ScaleIntensityRange", "args": {
        "a_min": -50, "a_max": 150, "b_min": 0.0, "b_max": 1.0, "clip": True}}]
    assert card.architecture == "monai.bundle" and card.head_type == "linear"
    assert card.class_names == ("background", "lesion")
    assert card.spacing_mm == (2.0, 2.0, 3.0) and card.patch_size == (16, 16, 16)
    assert card.normalization["type"] == "range" and card.normalization["a_max"] == 150
    assert set(card.network["config"]) == {"network_def", "num_classes"}  # no expressions kept
    assert "review" in card.limitations
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), _tiny_unet()(x))


def test_bundle_with_expression_in_network_is_refused(tmp_path):
    network_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                   "out_channels": "$__import__('os').getpid() and 2",
                   "channels": [4, 8], "strides": [2]}
    with pytest.raises(CalibSegError, match="Python expression"):
        import_bundle(_bundle(tmp_path, network_def), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bundle_with_foreign_target_is_refused(tmp_path):
    network_def = {"_target_": "subprocess.Popen", "args": ["true"]}
    with pytest.raises(CalibSegError, match="not a MONAI or torch.nn"):
        import_bundle(_bundle(tmp_path, network_def), str(tmp_path / "out"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "marker.txt"

    def write(path):
        if writer == "pickle":
            with open(path, "wb") as fh:
                pickle.dump({"weight": _Payload(str(marker))}, fh)
        else:
            torch.save({"weight": _Payload(str(marker))}, path)

    source = _bundle(tmp_path, weights=write)
    with pytest.raises(CalibSegError, match="refused to load"):
        import_bundle(source, str(tmp_path / "out"))
    with pytest.raises(CalibSegError):
        import_torchscript(os.path.join(source, "models", "model.pt"), str(tmp_path / "out2"))
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    # The payload is real: plain unpickling does run it.
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_Payload(str(proof))))
    assert proof.exists()


def test_torchscript_import_round_trip(tmp_path):
    net = _tiny_unet(5)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    scripted = torch.jit.trace(net, x)
    path = str(tmp_path / "seg.ts")
    torch.jit.save(scripted, path)
    folder = str(tmp_path / "imported")
    import_model(path, folder, kind="torchscript", class_names=["background", "tumour"],
                 patch_size=[16, 16, 16], spacing_mm=[1.0, 1.0, 2.0])
    assert sorted(os.listdir(folder)) == ["model.json", "model.ts"]
    model = load_model(folder)
    assert model.card.network == {"architecture": "torchscript", "file": "model.ts"}
    assert model.class_names == ("background", "tumour")
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), net(x))


def test_torchscript_class_count_checked(tmp_path):
    path = str(tmp_path / "seg.ts")
    torch.jit.save(torch.jit.trace(_tiny_unet(), torch.zeros(1, 1, 16, 16, 16)), path)
    with pytest.raises(CalibSegError, match="2 output channels"):
        import_torchscript(path, str(tmp_path / "m"), class_names=["a", "b", "c"],
                           patch_size=[16, 16, 16])


def test_import_errors(tmp_path):
    with pytest.raises(CalibSegError, match="no such file"):
        import_model(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(CalibSegError, match="MONAI bundle"):
        import_model(str(tmp_path / "plain"), str(tmp_path / "out"))
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"hello")
    with pytest.raises(CalibSegError, match="TorchScript"):
        import_model(str(junk), str(tmp_path / "out"))
