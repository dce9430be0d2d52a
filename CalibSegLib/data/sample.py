"""The embedded sample cases.

``mni-t1``
    The MNI ICBM152 2009a (nonlinear symmetric) T1 template with its grey- and
    white-matter probability maps, read from the installed ``nilearn`` wheel.
    Labels: 0 background/CSF, 1 grey matter, 2 white matter (argmax of the
    tissue probabilities); the soft maps are the *probabilistic* reference.
``ct-chest``
    The chest CT ``CTChest4.nrrd`` and its Slicer segmentation (7 segments) from
    the installed ``slicerio`` wheel.

Arrays are ``(Z, Y, X)`` = Slicer's ``(K, J, I)``; ``affine`` maps voxel indices
``(i, j, k, 1)`` (note the order: X index first) to RAS millimetres, exactly
like Slicer's IJKToRAS matrix.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import nibabel as nib
import nrrd
import numpy as np
import slicerio

from CalibSegLib.data.case import (
    MNI_CLASS_COLORS,
    MNI_CLASS_NAMES,
    SampleCase,
    available_cases,
)
from CalibSegLib.data.shift import shifted_case
from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import LPS_TO_RAS

__all__ = ["sample_case"]



def sample_case(
    name: str = "mni-t1", resolution_mm: float = 2.0, shift_seed: int | None = None
) -> SampleCase:
    """Load an embedded sample case.

    Parameters
    ----------
    name
        ``"mni-t1"`` or ``"ct-chest"``.
    resolution_mm
        For ``mni-t1``: an integer multiple of the native 1 mm (1, 2, 3, 4...);
        voxels are averaged in blocks (soft probabilities stay probabilities and
        labels are their argmax). Ignored for ``ct-chest`` (native grid only).
    shift_seed
        When given, return the deterministic shifted variant with that seed
        (see :func:`CalibSegLib.data.shift.shifted_case`).
    """
    if name == "mni-t1":
        case = _mni_case(resolution_mm)
    elif name == "ct-chest":
        case = _ct_chest_case()
    else:
        raise CalibSegError(
            f"Unknown sample case {name!r}; choose one of {', '.join(available_cases())}."
        )
    if shift_seed is not None:
        case = shifted_case(case, shift_seed)
    return case


# --- MNI ICBM152 -----------------------------------------------------------------------------

def _nilearn_data_dir() -> str:
    """The data folder of the installed nilearn wheel (found without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise CalibSegError(
            "The 'mni-t1' sample case needs the 'nilearn' package, which ships the MNI "
            "template: pip install nilearn"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


@functools.lru_cache(maxsize=1)
def _mni_native() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, GM, WM as (I, J, K) float32 in [0, 1] for the maps, and the affine."""
    folder = _nilearn_data_dir()
    arrays = []
    affine = None
    for part in ("t1", "gm", "wm"):
        path = os.path.join(folder, f"mni_icbm152_{part}_tal_nlin_sym_09a_converted.nii.gz")
        if not os.path.exists(path):
            raise CalibSegError(
                f"The MNI template file {path} is missing from the installed nilearn; "
                "reinstall nilearn (pip install --force-reinstall nilearn)."
            )
        img = nib.load(path)
        assert isinstance(img, nib.Nifti1Image)  # the templates are NIfTI-1 files
        arrays.append(np.asarray(img.dataobj, dtype=np.float32))
        affine = img.affine.astype(np.float64)
    t1, gm, wm = arrays
    assert affine is not None
    gm /= 255.0
    wm /= 255.0
    for a in (t1, gm, wm):
        a.setflags(write=False)
    return t1, gm, wm, affine


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over non-overlapping f×f×f blocks of an (I, J, K) array (edges cropped)."""
    if f == 1:
        return a.copy()
    s = [n // f * f for n in a.shape]
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def _mni_case(resolution_mm: float) -> SampleCase:
    factor = int(round(resolution_mm))
    if factor < 1 or abs(factor - resolution_mm) > 1e-6:
        raise CalibSegError(
            f"resolution_mm={resolution_mm!r} is not supported for 'mni-t1': use a whole number "
            "of millimetres (1 = native, 2, 3, 4 ...)."
        )
    t1, gm, wm, affine = _mni_native()
    t1, gm, wm = (_block_mean(a, factor) for a in (t1, gm, wm))
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    tissue = gm + wm
    over = tissue > 1.0
    gm[over] /= tissue[over]
    wm[over] /= tissue[over]
    bg = np.clip(1.0 - gm - wm, 0.0, 1.0)
    probs_ijk = np.stack([bg, gm, wm]).astype(np.float32)
    probs_ijk /= probs_ijk.sum(axis=0, keepdims=True)
    # (C, I, J, K) -> (C, K, J, I)
    probs = np.ascontiguousarray(probs_ijk.transpose(0, 3, 2, 1))
    image = np.ascontiguousarray(t1.transpose(2, 1, 0).astype(np.float32))
    labels = probs.argmax(axis=0).astype(np.uint8)
    scale = np.eye(4)
    scale[:3, :3] *= factor
    scale[:3, 3] = (factor - 1) / 2.0  # block centre in native voxel units
    new_affine = affine @ scale
    return SampleCase(
        name="mni-t1",
        image=image,
        affine=new_affine,
        labels=labels,
        class_names=MNI_CLASS_NAMES,
        class_colors=MNI_CLASS_COLORS,
        reference_probs=probs,
        description=f"MNI ICBM152 2009a T1 template at {factor} mm with tissue probability maps",
        attribution="MNI ICBM152 nonlinear symmetric 2009a (McConnell Brain Imaging Centre, "
        "Montreal Neurological Institute; Fonov et al. 2009/2011), via nilearn",
        meta={"resolution_mm": float(factor)},
    )


# --- Chest CT ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _ct_native():
    try:
        ct_path = slicerio.get_testdata_file("CTChest4.nrrd")
        seg_path = slicerio.get_testdata_file("Segmentation.seg.nrrd")
    except Exception as exc:  # pragma: no cover - depends on the installed wheel
        raise CalibSegError(
            "The chest CT sample needs the 'slicerio' package with its test data: "
            "pip install --force-reinstall slicerio"
        ) from exc
    ct, header = nrrd.read(ct_path)
    seg = slicerio.read_segmentation(seg_path)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(header["space directions"], dtype=np.float64).T
    ijk_to_lps[:3, 3] = np.asarray(header["space origin"], dtype=np.float64)
    if header.get("space") != "left-posterior-superior":
        raise CalibSegError(f"Unexpected space {header.get('space')!r} in {ct_path}.")
    if not np.allclose(np.asarray(seg["ijkToLPS"]), ijk_to_lps, atol=1e-4) or any(
        seg["referenceImageExtentOffset"]
    ):
        raise CalibSegError("The chest CT segmentation is not on the CT grid.")
    return ct, ijk_to_lps, seg


def _ct_chest_case() -> SampleCase:
    ct, ijk_to_lps, seg = _ct_native()
    segments = sorted(seg["segments"], key=lambda s: s["labelValue"])
    voxels = np.asarray(seg["voxels"])
    labels_ijk = np.zeros(voxels.shape, dtype=np.uint8)
    for index, segment in enumerate(segments, start=1):
        labels_ijk[voxels == segment["labelValue"]] = index
    names = ("background",) + tuple(s["name"] for s in segments)
    colors = ((0.0, 0.0, 0.0),) + tuple((float(r), float(g), float(b))
                                        for r, g, b in (s["color"] for s in segments))
    return SampleCase(
        name="ct-chest",
        image=np.ascontiguousarray(ct.transpose(2, 1, 0).astype(np.float32)),
        affine=LPS_TO_RAS @ ijk_to_lps,
        labels=np.ascontiguousarray(labels_ijk.transpose(2, 1, 0)),
        class_names=names,
        class_colors=colors,
        reference_probs=None,
        description="chest CT (HU) with a 7-segment Slicer segmentation",
        attribution="CTChest4 test data of 3D Slicer, via slicerio",
        meta={"units": "HU"},
    )
