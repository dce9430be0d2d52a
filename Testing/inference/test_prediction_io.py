"""save_prediction / load_prediction: both forms round-trip equal, compact files memory-mapped,
files of the Slicer module's earlier writer still load, bad files give one clear error."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from doubles import write_earlier_prediction_file

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference import (
    Prediction,
    apply_temperature,
    compact_logits,
    load_prediction,
    probability_maps,
    save_prediction,
)
from CalibSegLib.inference.prediction import topk_maps


def _logits(num_classes: int, shape=(5, 7, 6), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_classes, *shape)) * 3.0).astype(np.float32)


def _full(logits: np.ndarray, temperature: float = 1.3) -> Prediction:
    probs, confidence, entropy = probability_maps(torch.from_numpy(logits), temperature)
    c = logits.shape[0]
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 7.5]
    return Prediction(
        logits=logits, probs=probs.numpy(), labels=logits.argmax(0).astype(np.uint8),
        confidence=confidence.numpy(), entropy=entropy.numpy(), affine=affine,
        class_names=tuple(f"class {i}" for i in range(c)), temperature=temperature,
        model_name="m", model_version="1.2",
        class_colors=tuple((i / c, 0.5, 1.0 - i / c) for i in range(c)),
        info={"device": "cpu", "windows": 3})


def _compact(logits: np.ndarray, temperature: float = 1.3) -> Prediction:
    full = _full(logits, temperature)
    scores = compact_logits(logits, temperature=temperature, affine=full.affine,
                            class_names=full.class_names)
    confidence, entropy = topk_maps(scores)
    return dataclasses.replace(full, logits=None, probs=None, labels=scores.labels(),
                               confidence=confidence, entropy=entropy, scores=scores)


def _assert_same(a: Prediction, b: Prediction) -> None:
    assert a.is_compact == b.is_compact
    for name in ("labels", "confidence", "entropy", "affine", "logits", "probs"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    if a.scores is not None:
        assert b.scores is not None
        for name in ("indices", "gaps", "tail"):
            np.testing.assert_array_equal(getattr(a.scores, name), getattr(b.scores, name))
        assert b.scores.num_classes == a.scores.num_classes
    for name in ("class_names", "temperature", "model_name", "model_version", "info"):
        assert getattr(a, name) == getattr(b, name), name
    np.testing.assert_allclose(np.asarray(b.class_colors), np.asarray(a.class_colors))


@pytest.mark.parametrize("num_classes", [3, 25])
def test_compact_round_trip_is_memory_mapped_and_equal(tmp_path, num_classes):
    pred = _compact(_logits(num_classes))
    path = save_prediction(str(tmp_path / "p.npz"), pred)
    back = load_prediction(path)
    _assert_same(pred, back)
    assert isinstance(back.scores.indices, np.memmap) and isinstance(back.confidence, np.memmap)
    assert not back.confidence.flags.writeable
    # the file holds no per-class float32: top-k bytes plus the two float32 maps
    voxels = int(np.prod(pred.shape))
    assert os.path.getsize(path) < voxels * (16 + 8) + 4096
    # derived quantities of the loaded prediction equal the original's
    np.testing.assert_array_equal(back.class_probability(2, (1,)), pred.class_probability(2, (1,)))
    hot = apply_temperature(back, 0.7)
    np.testing.assert_array_equal(hot.confidence, apply_temperature(pred, 0.7).confidence)
    loaded = load_prediction(path, mmap=False)
    assert not isinstance(loaded.scores.indices, np.memmap)
    _assert_same(pred, loaded)


def test_full_round_trip_is_equal(tmp_path):
    pred = _full(_logits(4))
    back = load_prediction(save_prediction(str(tmp_path / "f.npz"), pred))
    _assert_same(pred, back)


def test_old_full_precision_file_still_loads(tmp_path):
    pred = _full(_logits(3, seed=4), temperature=0.8)
    path = str(tmp_path / "old.npz")
    write_earlier_prediction_file(path, pred)
    back = load_prediction(path)
    assert not back.is_compact
    np.testing.assert_array_equal(back.logits, pred.logits)
    np.testing.assert_allclose(back.probs, pred.probs, atol=1e-6)
    np.testing.assert_allclose(back.confidence, pred.confidence, atol=1e-6)
    assert back.temperature == 0.8 and back.class_names == pred.class_names


def test_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(CalibSegError, match="No prediction file"):
        load_prediction(str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CalibSegError, match="Cannot read"):
        load_prediction(str(junk))
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(CalibSegError, match="not a prediction file"):
        load_prediction(str(other))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, logits=np.array([object()], dtype=object),
             __meta__=np.frombuffer(b"{}", np.uint8))
    with pytest.raises(CalibSegError, match="Cannot read"):
        load_prediction(str(pickled))
    with pytest.raises(CalibSegError, match=r"\.npz"):
        save_prediction(str(tmp_path / "p.nii.gz"), _full(_logits(3)))


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "p.npz"
    target.write_bytes(b"previous")
    pred = _compact(_logits(6))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        save_prediction(str(target), pred)
    assert target.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["p.npz"]
