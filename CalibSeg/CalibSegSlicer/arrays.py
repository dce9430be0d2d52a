"""The one place where MRML volume nodes and CalibSegLib arrays are converted.

CalibSegLib works on ``(Z, Y, X)`` arrays with a 4x4 voxel-to-RAS affine whose
voxel index order is ``(i, j, k) = (X, Y, Z)``. Slicer's ``arrayFromVolume``
already returns ``(K, J, I) = (Z, Y, X)`` and a volume node's IJKToRAS matrix is
exactly that affine, so the conversion is a copy plus the matrix. Every other
file of the module goes through these functions.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from CalibSegLib.errors import CalibSegError


def affineFromNode(volumeNode) -> np.ndarray:
    """The node's IJKToRAS matrix as a (4, 4) float64 array (parent transforms ignored)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayFromNode(volumeNode, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(array (Z, Y, X), affine)`` of a scalar or label-map volume node, as copies.

    The copy keeps later edits of the returned array from touching the node.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise CalibSegError("The selected volume has no image data; load or select another volume.")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise CalibSegError(
            f"Volume '{volumeNode.GetName()}' has several components per voxel; "
            "select a single-channel (grey-level) volume."
        )
    array = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=dtype, copy=True)
    return array, affineFromNode(volumeNode)


def setGeometry(volumeNode, affine: np.ndarray) -> None:
    """Set a node's IJKToRAS matrix from a (4, 4) affine."""
    matrix = vtk.vtkMatrix4x4()
    affine = np.asarray(affine, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    volumeNode.SetIJKToRASMatrix(matrix)


def fillNode(volumeNode, array: np.ndarray, affine: np.ndarray) -> None:
    """Put a ``(Z, Y, X)`` array and its geometry into an existing volume node.

    ``slicer.util.updateVolumeFromArray`` copies voxels only, so the geometry is
    set explicitly as well.
    """
    if array.ndim != 3:
        raise CalibSegError(f"Expected a 3D (Z, Y, X) array, got shape {array.shape}.")
    image = volumeNode.GetImageData()
    if image is not None and image.GetPointData().GetScalars() is not None:
        target = slicer.util.arrayFromVolume(volumeNode)
        if target.shape == array.shape and target.dtype == array.dtype:
            # Same grid and type: overwrite in place (no reallocation), then notify.
            target[:] = array
            slicer.util.arrayFromVolumeModified(volumeNode)
            setGeometry(volumeNode, affine)
            return
    slicer.util.updateVolumeFromArray(volumeNode, np.ascontiguousarray(array))
    setGeometry(volumeNode, affine)


def newVolumeNode(array: np.ndarray, affine: np.ndarray, name: str,
                  className: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node (not yet in any scene) holding ``array`` with ``affine``."""
    node = getattr(slicer, className)()
    node.SetName(name)
    fillNode(node, array, affine)
    return node


def sameGeometry(affineA: np.ndarray, shapeA, affineB: np.ndarray, shapeB,
                 tolerance: float = 1e-3) -> bool:
    """Whether two grids coincide (same shape, affines equal within ``tolerance`` mm)."""
    return tuple(shapeA) == tuple(shapeB) and bool(
        np.allclose(np.asarray(affineA), np.asarray(affineB), atol=tolerance)
    )


def rasToIndex(affine: np.ndarray, ras, shape) -> tuple[int, int, int] | None:
    """The ``(z, y, x)`` array index of the voxel containing RAS point ``ras``, or None outside."""
    ijk = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.array([*ras[:3], 1.0])
    i, j, k = (int(np.floor(v + 0.5)) for v in ijk[:3])
    z, y, x = k, j, i
    if not (0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]):
        return None
    return z, y, x


def indexToRas(affine: np.ndarray, zyx) -> np.ndarray:
    """RAS position of the centre of voxel ``(z, y, x)``."""
    z, y, x = (float(v) for v in zyx)
    return (np.asarray(affine, dtype=np.float64) @ np.array([x, y, z, 1.0]))[:3]
