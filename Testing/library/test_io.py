"""Image I/O: round trips keep voxels and geometry; writes are atomic."""

from __future__ import annotations

import os

import numpy as np
import pytest

from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import read_image, write_image


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = (-10.0, 20.0, 5.5)
    return affine


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_oblique_anisotropic(tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 7, 9)).astype(np.float32)
    affine = _oblique_affine()
    path = str(tmp_path / f"img{suffix}")
    write_image(path, array, affine)
    back, back_affine = read_image(path)
    np.testing.assert_allclose(back, array)
    np.testing.assert_allclose(back_affine, affine, atol=1e-5)


def test_errors_are_clear(tmp_path):
    with pytest.raises(CalibSegError, match="no such file"):
        read_image(str(tmp_path / "missing.nii.gz"))
    with pytest.raises(CalibSegError, match="does not exist"):
        write_image(str(tmp_path / "nofolder" / "x.nii.gz"), np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(CalibSegError, match="unknown output format"):
        write_image(str(tmp_path / "x.png"), np.zeros((2, 2, 2)), np.eye(4))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(CalibSegError, match="this is a text file, not an image"):
        read_image(str(bad))
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(CalibSegError, match="the file is empty"):
        read_image(str(empty))
    binary = tmp_path / "noise.nii"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CalibSegError, match="cannot read this image") as info:
        read_image(str(binary))
    message = str(info.value)
    assert ".cxx" not in message and "\n" not in message  # no reader internals, one line


def test_refuse_overwrite_names_the_flag(tmp_path):
    from CalibSegLib.io import refuse_overwrite

    kept = tmp_path / "a.nii.gz"
    kept.write_bytes(b"x")
    refuse_overwrite([tmp_path / "new.nii.gz"])  # nothing there: fine
    refuse_overwrite([kept], overwrite=True)
    with pytest.raises(CalibSegError, match="already exists; pass --overwrite to replace it"):
        refuse_overwrite([kept, tmp_path / "new.nii.gz"])
    assert kept.read_bytes() == b"x"


def test_looks_like_labels():
    from CalibSegLib.io import looks_like_labels

    assert looks_like_labels(np.array([[0, 1], [2, 1]], dtype=np.int16))
    assert not looks_like_labels(np.arange(100, dtype=np.int16))
    assert not looks_like_labels(np.array([0.0, 1.0]))


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        write_image(str(tmp_path / "x.nii.gz"), np.zeros((2, 2, 2)), np.eye(4))
    assert os.listdir(tmp_path) == []


def test_uniform_file_modes(tmp_path):
    import stat

    from CalibSegLib.io import uniform_file_modes

    (tmp_path / "sub").mkdir()
    for name, mode in (("model.safetensors", 0o600), ("model.json", 0o644),
                       ("sub/proto.nii.gz", 0o640)):
        (tmp_path / name).write_bytes(b"x")
        os.chmod(tmp_path / name, mode)
    uniform_file_modes(str(tmp_path))
    modes = {stat.S_IMODE(os.stat(tmp_path / n).st_mode)
             for n in ("model.safetensors", "model.json", "sub/proto.nii.gz")}
    umask = os.umask(0)
    os.umask(umask)
    assert modes == {0o666 & ~umask}
