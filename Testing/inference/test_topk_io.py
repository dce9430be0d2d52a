"""Hand-over file of a top-k prediction: atomic write, memory-mapped read back equal."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from CalibSegLib.errors import CalibSegError
from CalibSegLib.inference.topk import compact_logits
from CalibSegLib.inference.topk_io import read_topk, write_topk
from CalibSegLib.inference.topk_stats import stats_from_topk


def _prediction(num_classes: int = 25, shape=(5, 6, 7)):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(0, 4, (num_classes,) + shape).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    names = tuple(f"organ {c}" for c in range(num_classes))
    return compact_logits(logits, temperature=1.3, affine=affine, class_names=names)


@pytest.mark.parametrize("num_classes", [3, 25, 300])
def test_written_file_reads_back_equal_and_memory_mapped(tmp_path, num_classes):
    prediction = _prediction(num_classes)
    path = write_topk(str(tmp_path / "case.npz"), prediction, meta={"model_name": "demo"})
    with zipfile.ZipFile(path) as archive:  # members are stored, so they can be mapped
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    back, meta = read_topk(path)
    assert meta == {"model_name": "demo"}
    for name in ("indices", "gaps", "tail"):
        array = getattr(back, name)
        assert isinstance(array, np.memmap) or array.size == 0
        assert not array.flags.writeable
        assert array.dtype == getattr(prediction, name).dtype
        np.testing.assert_array_equal(array, getattr(prediction, name))
    assert back.num_classes == num_classes and back.temperature == 1.3
    assert back.class_names == prediction.class_names
    np.testing.assert_array_equal(back.affine, prediction.affine)
    # everything computed from the mapped file equals the in-memory form
    np.testing.assert_array_equal(back.maps(2.0, region=2)[0], prediction.maps(2.0, region=2)[0])
    target = np.asarray(prediction.labels())
    a = stats_from_topk(back, target).to_arrays()
    b = stats_from_topk(prediction, target).to_arrays()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    copy, _ = read_topk(path, mmap=False)
    np.testing.assert_array_equal(copy.gaps, prediction.gaps)
    assert not isinstance(copy.gaps, np.memmap)


def test_file_size_is_the_compact_size(tmp_path):
    prediction = _prediction(25, (20, 30, 40))
    path = write_topk(str(tmp_path / "big.npz"), prediction)
    assert os.path.getsize(path) < prediction.nbytes + 4096
    assert prediction.nbytes == 16 * 20 * 30 * 40


def test_write_is_atomic(tmp_path, monkeypatch):
    prediction = _prediction(4)
    target = tmp_path / "case.npz"
    write_topk(str(target), prediction)
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        write_topk(str(target), _prediction(7))
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["case.npz"]  # no temporary left


def test_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(CalibSegError, match="No top-k prediction file"):
        read_topk(str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(CalibSegError, match="Cannot read"):
        read_topk(str(junk))
    other = tmp_path / "other.npz"
    np.savez(other, probs=np.zeros((3, 2, 2), np.float32))
    with pytest.raises(CalibSegError, match="not a top-k prediction file"):
        read_topk(str(other))
    prediction = _prediction(5)
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, indices=prediction.indices, gaps=prediction.gaps,
                        tail=prediction.tail, meta=np.zeros(2, np.uint8))
    with pytest.raises(CalibSegError, match="compressed"):
        read_topk(str(packed))
    with pytest.raises(CalibSegError, match=r"\.npz"):
        write_topk(str(tmp_path / "case.nii.gz"), prediction)
