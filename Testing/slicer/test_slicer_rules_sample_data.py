"""The sample case shipped with the extension and its SampleData registration.

Slicer's SampleData module (``Modules/Scripted/SampleData/SampleData.py``, 5.10 and 5.12)
registers a source with ``SampleDataLogic.registerCustomSampleDataSource(category,
sampleName, uris, fileNames, nodeNames, customDownloader, thumbnailFileName, loadFileTypes,
loadFiles, loadFileProperties, checksums, loadFileType)``; every per-file list must have the
same length, ``loadFileType`` and ``loadFileTypes`` are exclusive, a checksum is
``<SHA256|SHA512|MD5>:<full hex digest>``. It fetches each URI with
``urllib.request.urlretrieve`` into its cache under the given file name and compares the
checksum. The fake below enforces exactly that; the files are read back with readers
independent of the writer (pynrrd for the volume, slicerio for the segmentation).

Regenerate the shipped files (then update the checksums in ``sampledata.py``)::

    .venv/bin/python Testing/slicer/test_slicer_rules_sample_data.py --write
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import types
import urllib.request

import numpy as np
import pytest
from extension_layout import MODULE_DIR, ROOT, build_installed_tree, read

sys.path.insert(0, MODULE_DIR)
from CalibSegSlicer import locations, sampledata  # noqa: E402

SAMPLE_DIR = os.path.join(ROOT, "Resources", "SampleData")
DIGEST_LENGTH = {"SHA256": 64, "SHA512": 128, "MD5": 32}


def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                   nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                   loadFileTypes=None, loadFiles=None, loadFileProperties=None,
                                   checksums=None, loadFileType=None):
    """Stand-in with the signature of Slicer 5.10/5.12 and the checks its data source makes."""
    if loadFileType is not None and loadFileTypes is not None:
        raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
    if isinstance(uris, str):
        raise AssertionError("CalibSeg registers several files: uris must be a list")
    n = len(uris)
    for name, value in (("fileNames", fileNames), ("nodeNames", nodeNames),
                        ("loadFileTypes", loadFileTypes), ("checksums", checksums)):
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"{name} must have one entry per uri")
    for checksum in checksums:
        algo, digest = checksum.split(":")
        if algo not in DIGEST_LENGTH or len(digest) != DIGEST_LENGTH[algo]:
            raise ValueError(f"invalid checksum {checksum}")
    FakeSampleDataLogic.registered.append(dict(
        category=category, sampleName=sampleName, uris=uris, fileNames=fileNames,
        nodeNames=nodeNames, thumbnailFileName=thumbnailFileName, loadFileTypes=loadFileTypes,
        checksums=checksums))


class FakeSampleDataLogic:
    registered: list[dict] = []
    registerCustomSampleDataSource = staticmethod(registerCustomSampleDataSource)


@pytest.fixture
def fake_sample_data(monkeypatch):
    module = types.ModuleType("SampleData")
    module.SampleDataLogic = FakeSampleDataLogic
    FakeSampleDataLogic.registered = []
    monkeypatch.setitem(sys.modules, "SampleData", module)
    return FakeSampleDataLogic


def download(uri: str, folder: str, name: str, checksum: str) -> str:
    """What SampleData does with a source entry: urlretrieve, then compare the checksum."""
    path = os.path.join(folder, name)
    urllib.request.urlretrieve(uri, path)
    algo, digest = checksum.split(":")
    with open(path, "rb") as fh:
        assert hashlib.new(algo, fh.read()).hexdigest() == digest, f"{name}: checksum differs"
    return path


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# ------------------------------------------------------------------------------------- tests
def test_fake_has_the_signature_of_slicers_sample_data():
    names = list(inspect.signature(registerCustomSampleDataSource).parameters)
    assert names == ["category", "sampleName", "uris", "fileNames", "nodeNames",
                     "customDownloader", "thumbnailFileName", "loadFileTypes", "loadFiles",
                     "loadFileProperties", "checksums", "loadFileType"]


def test_checksums_match_the_shipped_files():
    assert sha256(locations.sampleDataPath()) == sampledata.VOLUME_SHA256
    assert sha256(locations.sampleLabelsPath()) == sampledata.LABELS_SHA256


@pytest.mark.parametrize("layout", ["source", "installed"])
def test_registration_works_offline_in_both_layouts(layout, fake_sample_data, tmp_path):
    base = None
    if layout == "installed":
        base = build_installed_tree(str(tmp_path / "qt-scripted-modules"))
    arguments = sampledata.registrationArguments(base)
    registerCustomSampleDataSource(**arguments)  # binds to the real signature and checks
    (entry,) = fake_sample_data.registered
    assert entry["category"] == "CalibSeg"
    assert entry["loadFileTypes"] == ["VolumeFile", "SegmentationFile"]
    assert os.path.isfile(entry["thumbnailFileName"])
    cache = tmp_path / "cache"
    cache.mkdir()
    for uri, name, checksum in zip(entry["uris"], entry["fileNames"], entry["checksums"]):
        assert uri.startswith("file://")
        if base is not None:
            assert os.path.abspath(base) in urllib.request.url2pathname(uri[len("file://"):])
        download(uri, str(cache), name, checksum)


def test_register_sample_data_calls_sample_data(fake_sample_data):
    assert sampledata.registerSampleData() is True
    assert len(fake_sample_data.registered) == 1


def test_missing_sample_is_a_warning_not_a_startup_error(fake_sample_data, monkeypatch, caplog):
    def missing(base=None):
        raise FileNotFoundError("CalibSeg file SampleData/x not found")

    monkeypatch.setattr(locations, "sampleDataPath", missing)
    assert sampledata.registerSampleData() is False
    assert fake_sample_data.registered == []
    assert "not registered" in caplog.text


def test_module_registers_the_sample_at_startup():
    """``CalibSeg.__init__`` connects ``startupCompleted()`` to ``registerSampleData``."""
    tree = ast.parse(read(os.path.join(MODULE_DIR, "CalibSeg.py")))
    module_class = next(n for n in tree.body
                        if isinstance(n, ast.ClassDef) and n.name == "CalibSeg")
    calls = [n for n in ast.walk(module_class) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "connect"
             and ast.unparse(n.func.value) == "slicer.app"]
    assert any(ast.literal_eval(c.args[0]) == "startupCompleted()"
               and ast.unparse(c.args[1]).endswith("registerSampleData") for c in calls)


def test_shipped_volume_equals_the_sample_case(mni_case):
    import nrrd

    data, header = nrrd.read(locations.sampleDataPath())
    assert header["encoding"] == "gzip"
    assert header["space"] == "left-posterior-superior"
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data.transpose(2, 1, 0), mni_case.image)  # (I,J,K)->(K,J,I)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(header["space directions"]).T
    ijk_to_lps[:3, 3] = header["space origin"]
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps, mni_case.affine,
                               atol=1e-9)


def test_shipped_segmentation_equals_the_sample_labels(mni_case):
    import slicerio

    segmentation = slicerio.read_segmentation(locations.sampleLabelsPath())
    names = [s["name"] for s in segmentation["segments"]]
    assert names == list(mni_case.class_names[1:])
    labels = np.zeros(segmentation["voxels"].shape, np.uint8)
    for index, name in enumerate(mni_case.class_names[1:], start=1):
        labels[slicerio.segment_mask(segmentation, name)] = index
    np.testing.assert_array_equal(labels.transpose(2, 1, 0), mni_case.labels)
    lps = np.asarray(segmentation["ijkToLPS"])
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, mni_case.affine, atol=1e-9)


@pytest.mark.mrml
def test_slicers_own_readers_load_the_shipped_files(mni_case):
    """MRML's storage nodes (what SampleData's VolumeFile / SegmentationFile loading uses)."""
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(locations.sampleDataPath())
    assert storage.ReadData(volume)
    image = volume.GetImageData()
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])
    np.testing.assert_array_equal(array, mni_case.image)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras, mni_case.affine, atol=1e-6)

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segStorage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    segStorage.SetFileName(locations.sampleLabelsPath())
    assert segStorage.ReadData(segmentation)
    content = segmentation.GetSegmentation()
    names = [content.GetNthSegment(i).GetName() for i in range(content.GetNumberOfSegments())]
    assert names == list(mni_case.class_names[1:])


def test_segment_names_are_the_demo_models_class_names(mni_case):
    """The sample's segmentation is a valid reference for every shipped model."""
    import json

    for folder in locations.shippedModelFolders():
        with open(os.path.join(folder, "model.json"), encoding="utf-8") as fh:
            card = json.load(fh)
        assert [c["name"] for c in card["classes"]] == list(mni_case.class_names)


def test_licence_notice_ships_beside_the_sample():
    notice = " ".join(read(os.path.join(SAMPLE_DIR, locations.SAMPLE_LICENSE_FILE)).split())
    assert "Louis Collins" in notice and "McGill University" in notice
    assert "Permission to use, copy, modify, and distribute" in notice
    assert "Fonov" in notice


# ---------------------------------------------------------------------------------- writer
def write_sample_files(folder: str = SAMPLE_DIR) -> dict[str, str]:
    """Write the sample volume, segmentation and thumbnail; ``{file: sha256}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicerio

    from CalibSegLib.data import sample_case
    from CalibSegLib.io import LPS_TO_RAS, write_image

    case = sample_case("mni-t1", resolution_mm=2.0)
    os.makedirs(folder, exist_ok=True)
    volume = os.path.join(folder, locations.SAMPLE_VOLUME_FILE)
    write_image(volume, case.image, case.affine)
    segmentation = slicerio.create_segmentation(case.image.shape[::-1], LPS_TO_RAS @ case.affine)
    labels_ijk = case.labels.transpose(2, 1, 0)
    for index, (name, color) in enumerate(zip(case.class_names, case.class_colors)):
        if index:
            slicerio.add_segment(segmentation, labels_ijk == index,
                                 {"id": name.replace(" ", "_"), "name": name, "color": list(color)})
    labels = os.path.join(folder, locations.SAMPLE_LABELS_FILE)
    slicerio.write_segmentation(labels, segmentation)
    thumbnail = os.path.join(folder, locations.SAMPLE_THUMBNAIL_FILE)
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(case.image[case.image.shape[0] // 2][::-1], cmap="gray")
    ax.set_axis_off()
    fig.savefig(thumbnail)
    plt.close(fig)
    return {path: sha256(path) for path in (volume, labels)}


if __name__ == "__main__":
    if "--write" in sys.argv:
        sys.path.insert(0, ROOT)
        for path, digest in write_sample_files().items():
            print(f"{path}\n  SHA256:{digest}")
    else:
        sys.exit(pytest.main([__file__, "-q"]))
