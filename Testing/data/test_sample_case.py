"""The embedded sample cases: geometry, labels, soft reference, shifted variants."""

from __future__ import annotations

import numpy as np
import pytest

from CalibSegLib.data import sample_case
from CalibSegLib.errors import CalibSegError


def test_mni_2mm_shapes_and_affine(mni_case):
    case = mni_case
    assert case.image.shape == (94, 116, 98)  # (Z, Y, X) = native (189, 233, 197) // 2
    assert case.labels.shape == case.image.shape
    assert case.reference_probs.shape == (3,) + case.image.shape
    np.testing.assert_allclose(case.spacing, (2.0, 2.0, 2.0))
    # centre of the first 2×2×2 block of native voxels (native origin -98, -134, -72)
    np.testing.assert_allclose(case.affine[:3, 3], (-97.5, -133.5, -71.5))
    np.testing.assert_allclose(case.affine[3], (0, 0, 0, 1))


def test_mni_native_matches_nifti_orientation():
    case = sample_case("mni-t1", resolution_mm=1.0)
    assert case.image.shape == (189, 233, 197)
    np.testing.assert_allclose(case.affine[:3, :3], np.eye(3))
    # RAS of voxel (i, j, k) = (98, 134, 72) is the origin of MNI space
    ras = case.affine @ np.array([98, 134, 72, 1.0])
    np.testing.assert_allclose(ras[:3], 0.0)


def test_mni_labels_and_soft_reference(mni_case):
    case = mni_case
    assert set(np.unique(case.labels).tolist()) == {0, 1, 2}
    assert case.class_names == ("background", "grey matter", "white matter")
    sums = case.reference_probs.sum(axis=0)
    assert np.abs(sums - 1.0).max() < 1e-5
    assert case.reference_probs.min() >= 0.0
    np.testing.assert_array_equal(case.labels, case.reference_probs.argmax(axis=0))
    # brain tissue is a real fraction of the head, grey matter more than white
    fractions = np.bincount(case.labels.ravel(), minlength=3) / case.labels.size
    assert 0.05 < fractions[1] < 0.3 and 0.03 < fractions[2] < fractions[1]


def test_block_average_preserves_mean_intensity():
    native = sample_case("mni-t1", resolution_mm=1.0)
    coarse = sample_case("mni-t1", resolution_mm=3.0)
    z, y, x = (n // 3 * 3 for n in native.image.shape)
    expected = native.image[:z, :y, :x].mean()
    assert coarse.image.mean() == pytest.approx(expected, rel=1e-5)


def test_case_arrays_are_independent_copies():
    a = sample_case("mni-t1", resolution_mm=4.0)
    a.image[:] = -1
    b = sample_case("mni-t1", resolution_mm=4.0)
    assert b.image.max() > 0


def test_shifted_variants_reproducible_and_distinct(mni_case_4mm):
    from CalibSegLib.data import shifted_case

    s1 = shifted_case(mni_case_4mm, 11)
    s1_again = shifted_case(mni_case_4mm, 11)
    s2 = shifted_case(mni_case_4mm, 12)
    np.testing.assert_array_equal(s1.image, s1_again.image)
    np.testing.assert_array_equal(s1.labels, s1_again.labels)
    assert not np.allclose(s1.image, s2.image)
    assert not np.allclose(s1.image, mni_case_4mm.image)
    # still a valid soft reference with labels = argmax, same grid
    assert np.abs(s1.reference_probs.sum(axis=0) - 1).max() < 1e-5
    np.testing.assert_array_equal(s1.labels, s1.reference_probs.argmax(axis=0))
    np.testing.assert_array_equal(s1.affine, mni_case_4mm.affine)
    # a small shift: most voxels keep their label
    assert (s1.labels == mni_case_4mm.labels).mean() > 0.75
    assert s1.meta["shift_seed"] == 11


def test_shifted_leaves_input_untouched(mni_case_4mm):
    from CalibSegLib.data import shifted_case

    before = mni_case_4mm.image.copy()
    shifted_case(mni_case_4mm, 3)
    np.testing.assert_array_equal(before, mni_case_4mm.image)


def test_ct_chest_case():
    case = sample_case("ct-chest")
    assert case.image.shape == (34, 128, 128)
    np.testing.assert_allclose(case.spacing, (3.046876, 3.046876, 10.0), rtol=1e-5)
    assert case.num_classes == 8
    assert case.class_names[0] == "background"
    assert "right lung" in case.class_names and "ribs" in case.class_names
    assert set(np.unique(case.labels).tolist()) == set(range(8))
    assert case.reference_probs is None
    assert case.image.min() < -900 and case.image.max() > 1000  # Hounsfield units
    # LPS file -> RAS: the first two axes flip sign
    assert case.affine[0, 0] > 0 and case.affine[0, 3] < 0
    lung = case.class_names.index("right lung")
    # right lung lies on the patient's right: positive R coordinate in RAS
    k, j, i = np.nonzero(case.labels == lung)
    centre = case.affine @ np.array([i.mean(), j.mean(), k.mean(), 1.0])
    assert centre[0] > 0


def test_unknown_case_and_resolution_give_clear_errors():
    with pytest.raises(CalibSegError, match="choose one of"):
        sample_case("nope")
    with pytest.raises(CalibSegError, match="whole number"):
        sample_case("mni-t1", resolution_mm=1.5)
