"""DICOM: a series written from the sample case reads back; predict --dicom-out writes a SEG
and a Parametric Map that reference the series and hold the same labels and confidence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from CalibSegLib.cli import main
from CalibSegLib.dicom import (
    read_series_datasets,
    write_confidence_map,
    write_segmentation,
    write_series,
)
from CalibSegLib.errors import CalibSegError
from CalibSegLib.io import read_image
from CalibSegLib.models.testing import tiny_model

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")


def dciodvfy_errors(*paths) -> list[str]:
    """The "Error" lines dicom3tools' validator reports for each file (none when valid)."""
    errors = []
    for path in paths:
        done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        errors += [f"{os.path.basename(str(path))}: {line}"
                   for line in (done.stdout + done.stderr).splitlines()
                   if line.startswith("Error")]
    return errors


@pytest.fixture(scope="module")
def series(tmp_path_factory, mni_case_4mm):
    folder = str(tmp_path_factory.mktemp("dicom") / "mni_series")
    write_series(mni_case_4mm.image, mni_case_4mm.affine, folder)
    return folder


def test_series_reads_back_with_geometry_and_values(series, mni_case_4mm):
    image, affine = read_image(series)  # SimpleITK/GDCM, independent of the pydicom writer
    assert image.shape == mni_case_4mm.image.shape
    np.testing.assert_allclose(affine, mni_case_4mm.affine, atol=1e-6)
    slope = float(pydicom.dcmread(os.path.join(series, "slice_0001.dcm")).RescaleSlope)
    assert np.abs(image - mni_case_4mm.image).max() <= slope / 2 + 1e-6
    datasets = read_series_datasets(series)
    assert len(datasets) == image.shape[0]
    assert len({d.SeriesInstanceUID for d in datasets}) == 1
    # slice order of read_series_datasets is the array's slice order
    z = image.shape[0] // 2
    stored = datasets[z].pixel_array * float(datasets[z].RescaleSlope)
    np.testing.assert_allclose(stored + float(datasets[z].RescaleIntercept), image[z], atol=1e-4)


def test_predict_dicom_out_writes_seg_and_parametric_map(tmp_path, series, capsys):
    import highdicom as hd

    model = tiny_model(str(tmp_path / "model"))
    out, dicom_out = tmp_path / "out", tmp_path / "dicom_out"
    code = main(["predict", series, "--model", model, "--device", "cpu", "-o", str(out),
                 "--dicom-out", str(dicom_out), "--temperature", "1.3"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(dicom_out)) == ["mni_series_confidence.dcm", "mni_series_seg.dcm"]
    labels, _ = read_image(str(out / "mni_series_seg.nii.gz"))
    confidence, _ = read_image(str(out / "mni_series_confidence.nii.gz"))
    sources = read_series_datasets(series)
    uids = [d.SOPInstanceUID for d in sources]

    seg = hd.seg.segread(str(dicom_out / "mni_series_seg.dcm"))
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    meta = json.loads((out / "mni_series_prediction.json").read_text())
    assert [s.SegmentLabel for s in seg.SegmentSequence] == meta["class_names"][1:]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == meta["model"]["name"]
    assert algorithm.AlgorithmVersion == meta["model"]["version"]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(back, labels)
    assert 0 < (back == 1).sum() < back.size  # a real segmentation, not an empty one

    pmap = hd.imread(str(dicom_out / "mni_series_confidence.dcm"))
    assert pmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pmap.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    values = pmap.get_pixels_by_source_instance(source_sop_instance_uids=uids)
    np.testing.assert_allclose(values, confidence, atol=1e-7)
    positions = {tuple(round(float(v), 4) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                 for f in pmap.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(round(float(v), 4) for v in d.ImagePositionPatient) for d in sources}
    spacing = pmap.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == [float(v) for v in sources[0].PixelSpacing]
    if DCIODVFY is not None:
        assert dciodvfy_errors(dicom_out / "mni_series_seg.dcm",
                               dicom_out / "mni_series_confidence.dcm") == []


def test_dicom_out_needs_a_series(tmp_path, mni_case_4mm, capsys):
    from CalibSegLib.io import write_image

    image = str(tmp_path / "case.nii.gz")
    write_image(image, mni_case_4mm.image, mni_case_4mm.affine)
    model = tiny_model(str(tmp_path / "model"))
    code = main(["predict", image, "--model", model, "--device", "cpu",
                 "-o", str(tmp_path / "out"), "--dicom-out", str(tmp_path / "dcm")])
    assert code == 2
    assert "--dicom-out needs a DICOM series folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "dcm").exists()


def test_writers_refuse_bad_input(tmp_path, series, mni_case_4mm):
    sources = read_series_datasets(series)
    labels = mni_case_4mm.labels
    names, colors = mni_case_4mm.class_names, mni_case_4mm.class_colors
    with pytest.raises(CalibSegError, match="predict on the series itself"):
        write_segmentation(labels[:-1], sources, str(tmp_path / "s.dcm"),
                           class_names=names, class_colors=colors)
    with pytest.raises(CalibSegError, match="Labels outside"):
        write_segmentation(labels + 5, sources, str(tmp_path / "s.dcm"),
                           class_names=names, class_colors=colors)
    bad = np.full(labels.shape, np.nan, np.float32)
    with pytest.raises(CalibSegError, match="NaN"):
        write_confidence_map(bad, sources, str(tmp_path / "c.dcm"))
    with pytest.raises(CalibSegError, match="already holds DICOM files"):
        write_series(mni_case_4mm.image, mni_case_4mm.affine, series)
    assert os.listdir(tmp_path) == [] or set(os.listdir(tmp_path)) <= {"dicom"}
    assert len(os.listdir(series)) == labels.shape[0]  # the source series is untouched


def test_segment_codes_follow_class_names():
    from pydicom.sr.codedict import codes

    from CalibSegLib.dicom import segment_concepts

    assert segment_concepts("grey matter") == (codes.SCT.AnatomicalStructure,
                                               codes.SCT.GrayMatter, None)
    assert segment_concepts("Right Lung") == (codes.SCT.AnatomicalStructure, codes.SCT.Lung,
                                              codes.SCT.Right)
    assert segment_concepts("ribs")[1] == codes.SCT.Rib
    assert segment_concepts("thoracic vertebral column")[1] == codes.SCT.ThoracicSpine
    assert segment_concepts("tumour core 3") == (codes.SCT.Tissue, codes.SCT.Tissue, None)


def test_chest_ct_segments_carry_their_coded_concepts(tmp_path):
    """Every chest CT segment gets the concept its Slicer segmentation names (not "Tissue")."""
    import highdicom as hd

    from CalibSegLib.data import sample_case
    from CalibSegLib.data.sample import _ct_native

    assert main(["-q", "sample-data", "ct-chest", "--dicom", "-o", str(tmp_path)]) == 0
    case = sample_case("ct-chest")
    sources = read_series_datasets(str(tmp_path / "ct-chest_dicom"), pixels=False)
    path = write_segmentation(case.labels, sources, str(tmp_path / "seg.dcm"),
                              class_names=case.class_names, class_colors=case.class_colors,
                              model_name="reference", model_version="1")
    seg = hd.seg.segread(path)
    # the segmentation file's own terminology is the independent reference
    terms = {s["name"]: s["terminology"] for s in _ct_native()[2]["segments"]}
    for item in seg.SegmentSequence:
        term = terms[item.SegmentLabel]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (term["type"][1], "SCT")
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert category.CodeValue in (term["category"][1], "91723000")  # anatomical structure
        modifier = getattr(kind, "SegmentedPropertyTypeModifierCodeSequence", None)
        if "typeModifier" in term:
            assert modifier[0].CodeValue == term["typeModifier"][1]
        else:
            assert modifier is None
    if DCIODVFY is not None:
        series = sorted((tmp_path / "ct-chest_dicom").iterdir())
        assert dciodvfy_errors(path, series[0], series[-1]) == []


@needs_dciodvfy
def test_sample_mr_series_validates(tmp_path):
    assert main(["-q", "sample-data", "mni-t1", "--resolution", "8", "--dicom",
                 "-o", str(tmp_path)]) == 0
    assert dciodvfy_errors(*sorted((tmp_path / "mni-t1_dicom").iterdir())) == []


@needs_dciodvfy
def test_dciodvfy_reports_errors():
    """The validator check itself can fail: a file missing required attributes is caught."""
    import tempfile

    ds = pydicom.Dataset()
    ds.SOPClassUID = pydicom.uid.MRImageStorage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "MR"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bad.dcm")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        assert dciodvfy_errors(path)


def test_sample_data_writes_a_dicom_series(tmp_path):
    assert main(["-q", "sample-data", "mni-t1", "--resolution", "4", "--dicom",
                 "-o", str(tmp_path)]) == 0
    image, _ = read_image(str(tmp_path / "mni-t1_dicom"))
    reference, _ = read_image(str(tmp_path / "mni-t1_image.nii.gz"))
    assert image.shape == reference.shape
    assert np.abs(image - reference).max() < 0.01 * (reference.max() - reference.min())


def test_ct_series_keeps_hounsfield_units_and_oblique_geometry(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(6, 20, 24)).astype(np.int16)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    folder = str(tmp_path / "ct")
    write_series(hu, affine, folder, modality="CT")
    first = pydicom.dcmread(os.path.join(folder, "slice_0001.dcm"))
    assert first.Modality == "CT" and first.RescaleType == "HU"
    image, back = read_image(folder)
    np.testing.assert_allclose(back, affine, atol=1e-5)
    assert np.abs(image - hu).max() <= float(first.RescaleSlope) / 2 + 1e-6
