"""The browser app's actions headless on real MRML (no browser): catalogue, uploads, runs in
the background with progress and cancel, overlays, temperature, reference, probe, export,
and the logic-side helpers it added (voxel probe, MRML table rows, colour legends)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import time
import zipfile

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # CalibSegWeb
sys.path.insert(0, os.path.join(ROOT, "CalibSeg"))

from CalibSegSlicer import layouts, legends, locations, table_rows, voxel_probe  # noqa: E402
from logic_support import case4, model_folders, new_scene  # noqa: E402

from CalibSegLib.errors import CalibSegError  # noqa: E402
from CalibSegWeb.catalogue import ModelCatalogue  # noqa: E402
from CalibSegWeb.session import ViewerSession  # noqa: E402
from CalibSegWeb.uploads import PrivateFolder  # noqa: E402

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from CalibSegLib.io import write_image

    case = case4()
    folder = tmp_path_factory.mktemp("web-input")
    write_image(str(folder / "labels.nii.gz"), case.labels.astype(np.int16), case.affine)
    return write_image(str(folder / "mni4.nii.gz"), case.image, case.affine)


@pytest.fixture
def session(tmp_path):
    scene = new_scene()
    for name in ("Red", layouts.COMPARE_VIEW):
        layouts.sliceNode(scene, name)
    proto, linear = model_folders()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    catalogue = ModelCatalogue.build([], [proto, linear, str(not_a_model)])
    folder = PrivateFolder(maxUploadBytes=2**20)
    yield ViewerSession(scene, catalogue, folder)
    folder.remove()


def wait(job, timeout=120.0):
    start = time.monotonic()
    while not job.done:
        assert time.monotonic() - start < timeout, "model run did not finish"
        time.sleep(0.05)


def run_models(session, ids):
    job = session.startRun(ids)
    wait(job)
    return session.finishRun()


def expected_prediction(folder, temperature=None):
    from CalibSegLib.inference import apply_temperature, predict
    from CalibSegLib.models import load_model

    case = case4()
    prediction = predict(case.image, case.affine, load_model(folder), device="cpu")
    return prediction if temperature is None else apply_temperature(prediction, temperature)


# ------------------------------------------------------------------------------ catalogue
def test_catalogue_lists_shipped_then_configured_and_marks_non_models(tmp_path):
    shipped = locations.shippedModelFolders()
    proto, _ = model_folders()
    empty = tmp_path / "empty"
    empty.mkdir()
    catalogue = ModelCatalogue.build(shipped, [proto, str(empty), proto])
    assert [e.folder for e in catalogue.entries] == shipped + [proto, str(empty)]
    assert all(e.shipped for e in catalogue.entries[:len(shipped)])
    card = catalogue.entries[len(shipped)].summary()
    assert card["name"] == "tiny-prototype" and card["error"] is None
    assert card["classes"] == list(case4().class_names)
    from CalibSegSlicer.catalog import cardText  # the Slicer panel's own card text

    assert card["text"] == cardText(catalogue.entries[len(shipped)].card)
    bad = catalogue.entries[-1]
    assert bad.card is None and "holds no model" in bad.error
    with pytest.raises(CalibSegError, match="Unknown model"):
        catalogue.get("/etc")  # a path from the page is never opened


def test_catalogue_expands_a_folder_of_models_and_the_environment(tmp_path, monkeypatch):
    proto, linear = model_folders()
    monkeypatch.setenv("CALIBSEG_MODEL_DIRS", os.path.dirname(proto))
    catalogue = ModelCatalogue.build([], [])
    assert sorted(e.folder for e in catalogue.entries) == sorted([proto, linear])


# ------------------------------------------------------------------------------ uploads
def test_uploads_are_private_limited_and_removed():
    folder = PrivateFolder(maxUploadBytes=1000)
    assert stat.S_IMODE(os.stat(folder.path).st_mode) == 0o700
    path = folder.saveUpload("../../etc/scan one.nii.gz", b"x" * 10)
    assert os.path.dirname(os.path.dirname(path)) == folder.path
    assert os.path.basename(path).endswith("scan_one.nii.gz")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(CalibSegError, match="more than the limit"):
        folder.saveUpload("big.nii.gz", b"x" * 1001)
    with pytest.raises(CalibSegError, match="not an image file"):
        folder.saveUpload("notes.txt", b"x")
    folder.remove()
    assert not os.path.exists(folder.path)


# ------------------------------------------------------------------------------ session
def test_run_shows_the_prediction_and_leaves_the_input_file_untouched(session, image_file):
    digest = hashlib.sha256(open(image_file, "rb").read()).hexdigest()
    session.loadImage(image_file)
    for composite in layouts.compositeNodes(session.scene, exclude=()):
        assert composite.GetBackgroundVolumeID() == session.inputNodeID
    assert run_models(session, ["m0"]) == ["A"]
    expected = expected_prediction(model_folders()[0])
    shown = slicer.util.arrayFromVolume(session.logic.node("A", "confidence"))
    np.testing.assert_allclose(shown, expected.confidence, atol=2e-3)
    assert hashlib.sha256(open(image_file, "rb").read()).hexdigest() == digest
    legend = session.legend("A")
    assert legend["low"] == pytest.approx(1 / 3) and legend["high"] == pytest.approx(1.0)
    assert len(legend["colors"]) == 8 and legend["colors"][0] != legend["colors"][-1]


def test_run_reports_progress_and_the_server_thread_stays_free(session, image_file):
    session.loadImage(image_file)
    job = session.startRun(["m0", "m1"])
    seen = set()
    start = time.monotonic()
    while not job.done:  # this thread is never blocked by the run
        seen.add(round(job.fraction, 2))
        assert time.monotonic() - start < 120
        time.sleep(0.01)
    assert job.fraction == 1.0 and job.error is None
    assert len(seen) >= 2
    assert session.finishRun() == ["A", "B"]


def test_run_again_keeps_a_slot_showing_the_same_model(session, image_file):
    session.loadImage(image_file)
    run_models(session, ["m0"])
    session.setTemperature("A", 2.5)
    shownA = session.logic.node("A", "confidence").GetID()
    job = session.startRun(["m0", "m1"])
    assert job.slots == ["B"] and job.kept == ["A"]
    wait(job)
    assert session.finishRun() == ["A", "B"]
    assert session.logic.node("A", "confidence").GetID() == shownA
    assert session.temperatures()["A"] == pytest.approx(2.5)
    job = session.startRun(["m1"])  # another model in A, B dropped
    assert job.slots == ["A"] and job.kept == []
    wait(job)
    assert session.finishRun() == ["A"] and list(session.logic.results) == ["A"]
    assert session.logic.results["A"].name == "tiny-linear"


def test_cancel_shows_nothing_and_leaks_no_node(session, image_file):
    session.loadImage(image_file)
    before = session.scene.GetNumberOfNodes()
    job = session.startRun(["m0", "m1"])
    session.cancelRun()
    wait(job)
    assert job.cancelled and job.outputs == []
    assert session.finishRun() == []
    assert not session.logic.results and session.scene.GetNumberOfNodes() == before


def test_errors_are_one_clear_message(session, image_file):
    with pytest.raises(CalibSegError, match="No image loaded"):
        session.startRun(["m0"])
    session.loadImage(image_file)
    with pytest.raises(CalibSegError, match="holds no model"):
        session.startRun(["m2"])
    with pytest.raises(CalibSegError, match="Unknown model"):
        session.startRun(["../../etc"])
    with pytest.raises(CalibSegError, match="No model result"):
        session.setTemperature("A", 2.0)
    job = session.startRun(["m0"])
    with pytest.raises(CalibSegError, match="A model is running"):
        session.startRun(["m0"])
    wait(job)
    session.finishRun()
    with pytest.raises(CalibSegError, match="sample"):
        session.chooseReference("sample")  # not the sample case


def test_temperature_reference_metrics_and_diagram(session, image_file):
    from CalibSegLib.calibration import ReliabilityStats

    session.loadImage(image_file)
    run_models(session, ["m0"])
    labels_file = os.path.join(os.path.dirname(image_file), "labels.nii.gz")
    session.chooseReference(None, path=labels_file)
    header, rows = session.metricsTable()
    assert header[0] == "metric" and header[1].startswith("A: tiny-prototype")
    table = {row[0]: row[1] for row in rows}

    def ece_at(T):
        prediction = expected_prediction(model_folders()[0], T)
        return ReliabilityStats.from_probs(prediction.probs, case4().labels,
                                           n_bins=20).metrics().ece

    card_T = session.temperatures()["A"]
    assert float(table["ECE"]) == pytest.approx(ece_at(card_T), abs=2e-3)
    session.setTemperature("A", 3.0)
    table3 = {row[0]: row[1] for row in session.metricsTable()[1]}
    assert float(table3["temperature"]) == pytest.approx(3.0)
    assert float(table3["ECE"]) == pytest.approx(ece_at(3.0), abs=2e-3)
    shown = slicer.util.arrayFromVolume(session.logic.node("A", "confidence"))
    expected = expected_prediction(model_folders()[0], 3.0).confidence
    np.testing.assert_allclose(shown, expected, atol=2e-3)
    png = session.diagramPng()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    fitted = session.fitTemperatures()
    assert session.temperatures()["A"] == pytest.approx(fitted["A"])


def test_a_reference_chosen_before_the_run_applies_to_it(session, image_file):
    session.loadImage(image_file)
    labels = os.path.join(os.path.dirname(image_file), "labels.nii.gz")
    assert session.chooseReference(None, path=labels) == {}
    assert session.metricsTable() == ([], [])
    run_models(session, ["m0"])
    header, rows = session.metricsTable()
    assert header[1].startswith("A: ") and any(row[0] == "ECE" for row in rows)
    with pytest.raises(CalibSegError):
        session.chooseReference("something else")
    with pytest.raises(CalibSegError, match="non-integer"):
        session.chooseReference(None, path=image_file)  # the image is no label map
    assert session.metricsTable()[0] == header  # a refused reference changes nothing


def test_temperature_preview_shows_the_visible_plane_then_applies(session, image_file):
    session.loadImage(image_file)
    run_models(session, ["m0"])
    session.chooseReference(None, path=os.path.join(os.path.dirname(image_file),
                                                    "labels.nii.gz"))
    table = session.metricsTable()
    case = case4()
    red = layouts.sliceNode(session.scene, "Red")
    red.SetOrientation("Axial")
    red.SetDimensions(100, 100, 1)
    red.SetFieldOfView(200.0, 200.0, 1.0)
    red.JumpSliceByCentering(*(case.affine @ np.array([24, 29, 12, 1.0]))[:3])
    for name in ("Green", "Yellow"):
        node = layouts.sliceNode(session.scene, name, "Axial")
        node.JumpSliceByCentering(*(case.affine @ np.array([24, 29, 12, 1.0]))[:3])
    assert session.previewTemperature("A", 3.0)
    assert session.temperatures()["A"] == pytest.approx(3.0)
    assert session.showing() == "preview: visible slices"
    assert session.metricsTable() != table  # an estimate from a voxel sample meanwhile
    shown = slicer.util.arrayFromVolume(session.logic.node("A", "confidence"))
    expected = expected_prediction(model_folders()[0], 3.0).confidence
    np.testing.assert_allclose(shown[12], expected[12], atol=2e-3)  # the plane shown
    assert session.applyTemperatures() == ["A"]
    assert session.showing() == "full volume"
    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(session.logic.node("A", "confidence")), expected, atol=2e-3)
    assert session.metricsTable() != table


def test_probe_of_a_click_matches_the_prediction_at_that_voxel(session, image_file):
    session.loadImage(image_file)
    run_models(session, ["m0"])
    case = case4()
    sliceNode = layouts.sliceNode(session.scene, "Red")
    sliceNode.SetDimensions(200, 200, 1)
    sliceNode.SetFieldOfView(100.0, 100.0, 1.0)
    index = (10, 26, 20)  # z, y, x
    ras = (case.affine @ np.array([index[2], index[1], index[0], 1.0]))[:3]
    sliceNode.JumpSliceByCentering(*ras)
    probe = session.probeSliceView(sliceNode, 100, 100)  # the view's centre pixel
    np.testing.assert_allclose(probe["ras"], ras, atol=0.01)
    entry = probe["models"]["A"]
    expected = expected_prediction(model_folders()[0], session.temperatures()["A"])
    assert entry["index_zyx"] == index
    np.testing.assert_allclose(list(entry["probabilities"].values()),
                               expected.probs[(slice(None), *index)], atol=2e-3)
    assert entry["confidence"] == pytest.approx(float(expected.confidence[index]), abs=2e-3)
    assert 1 <= len(entry["prototypes"]) <= 3
    by_index = {row["prototype"]: row for row in entry["prototypes"]}
    for k, row in by_index.items():
        crop = row["crop"]
        if k == 0:  # the one prototype with a gallery crop in the card
            assert crop.dtype == np.uint8 and crop.shape == (12, 12)
        else:
            assert crop is None
    far = session.probeSliceView(sliceNode, 100000, 100000)
    assert far["models"] == {}


def test_ras_from_slice_xy_follows_the_slice_geometry():
    scene = new_scene()
    sliceNode = layouts.sliceNode(scene, "Red")
    sliceNode.SetDimensions(300, 200, 1)
    sliceNode.SetFieldOfView(150.0, 100.0, 1.0)
    sliceNode.JumpSliceByCentering(10.0, -20.0, 30.0)
    centre = voxel_probe.rasFromSliceXY(sliceNode, 150, 100)
    np.testing.assert_allclose(centre, (10.0, -20.0, 30.0), atol=1e-6)
    right = voxel_probe.rasFromSliceXY(sliceNode, 250, 100)  # 100 px at 0.5 mm/px
    assert abs(np.linalg.norm(np.subtract(right, centre)) - 50.0) < 1e-6


def test_table_rows_read_an_mrml_table():
    import vtk

    node = slicer.vtkMRMLTableNode()
    table = vtk.vtkTable()
    names, values = vtk.vtkStringArray(), vtk.vtkDoubleArray()
    names.SetName("metric")
    values.SetName("A: model")
    for name, value in (("ECE", 0.25), ("ACE", 0.5)):
        names.InsertNextValue(name)
        values.InsertNextValue(value)
    table.AddColumn(names)
    table.AddColumn(values)
    node.SetAndObserveTable(table)
    assert table_rows.tableRows(node) == (["metric", "A: model"],
                                          [["ECE", "0.25"], ["ACE", "0.5"]])
    assert table_rows.tableRows(None) == ([], [])


def test_legend_of_a_volume_without_display_is_none():
    assert legends.legend(None) is None
    assert legends.legend(slicer.vtkMRMLScalarVolumeNode()) is None


def test_compare_and_export(session, image_file):
    from CalibSegLib.io import read_image

    session.loadImage(image_file)
    with pytest.raises(CalibSegError):
        session.exportZip()
    run_models(session, ["m0"])
    with pytest.raises(CalibSegError, match="two models"):
        session.setCompare(True)
    run_models(session, ["m0", "m1"])
    session.setCompare(True)
    composite = layouts.compositeNode(session.scene, layouts.COMPARE_VIEW)
    assert composite.GetForegroundVolumeID() == session.logic.node("B", "confidence").GetID()
    name, data = session.exportZip()
    assert name == "calibseg-mni4.zip"
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    confidence = [n for n in names if n.startswith("A-") and n.endswith("confidence.nii.gz")]
    assert confidence and any(n.startswith("B-") for n in names)
    path = archive.extract(confidence[0], session.folder.subfolder("check"))
    values, _ = read_image(path)
    shown = slicer.util.arrayFromVolume(session.logic.node("A", "confidence"))
    np.testing.assert_allclose(values, shown, atol=1e-6)


def test_a_new_image_clears_the_previous_case(session, image_file):
    session.loadImage(image_file)
    run_models(session, ["m0"])
    session.loadImage(image_file)
    assert not session.logic.results
    nodes = session.scene.GetNodesByClass("vtkMRMLVolumeNode")
    assert nodes.GetNumberOfItems() == 1  # only the new input


def test_a_dicom_input_also_exports_dicom_seg_and_parametric_map(session, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from CalibSegLib.dicom import write_series

    case = case4()
    series = str(tmp_path / "series")
    write_series(case.image, case.affine, series, modality="MR",
                 series_description="CalibSeg test")
    session.loadImage(series)
    assert session.dicomFolder == series
    run_models(session, ["m0"])
    name, data = session.exportZip()
    archive = zipfile.ZipFile(io.BytesIO(data))
    seg_name = next(n for n in archive.namelist() if n.endswith("-seg.dcm"))
    pm_name = next(n for n in archive.namelist() if n.endswith("-confidence.dcm"))
    seg = pydicom.dcmread(io.BytesIO(archive.read(seg_name)))
    pm = pydicom.dcmread(io.BytesIO(archive.read(pm_name)))
    assert seg.Modality == "SEG" and pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    source_uid = pydicom.dcmread(os.path.join(series, sorted(os.listdir(series))[0])) \
        .StudyInstanceUID
    assert seg.StudyInstanceUID == source_uid == pm.StudyInstanceUID


def test_compact_prediction_in_the_browser_session(tmp_path, image_file):
    """The top-k form through the page's actions: run, preview, background refresh, table,
    diagram, probe and export."""
    from CalibSegLib.inference import apply_temperature, predict
    from CalibSegLib.models import load_model

    scene = new_scene()
    for name in ("Red", layouts.COMPARE_VIEW):
        layouts.sliceNode(scene, name)
    proto, linear = model_folders()
    folder = PrivateFolder(maxUploadBytes=2**20)
    session = ViewerSession(scene, ModelCatalogue.build([], [linear]), folder, form="compact")
    session.logic.backgroundVoxels = 0
    try:
        session.loadImage(image_file)
        assert run_models(session, ["m0"]) == ["A"]
        result = session.logic.results["A"]
        assert result.prediction.is_compact and result.prediction.probs is None
        session.chooseReference(None, path=os.path.join(os.path.dirname(image_file),
                                                        "labels.nii.gz"))
        assert session.showing() == "full volume"
        case = case4()
        compact = predict(case.image, case.affine, load_model(linear), device="cpu",
                          form="compact")
        assert session.previewTemperature("A", 2.5)
        assert session.showing() == "preview: visible slices"
        assert session.applyTemperatures() == ["A"]
        deadline = time.monotonic() + 60
        while session.refreshing:
            assert time.monotonic() < deadline
            session.pollTemperatures()
            time.sleep(0.02)
        assert session.showing() == "full volume"
        at = apply_temperature(compact, 2.5)
        np.testing.assert_array_equal(
            slicer.util.arrayFromVolume(session.logic.node("A", "confidence")), at.confidence)
        header, rows = session.metricsTable()
        ece = next(row for row in rows if row[0] == "ECE")[1]
        metrics = at.reliability_stats(case.labels, 20).metrics().to_dict()
        assert float(ece) == pytest.approx(metrics["ece"], abs=1e-4)
        assert session.diagramPng().startswith(b"\x89PNG")
        index = (10, 26, 20)
        ras = (case.affine @ np.array([index[2], index[1], index[0], 1.0]))[:3]
        entry = voxel_probe.probeVoxel(session.logic, ras)["A"]
        probs = at.probabilities(region=index)
        np.testing.assert_allclose(list(entry["probabilities"].values()), probs, atol=1e-6)
        name, data = session.exportZip()
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert any(n.endswith("-confidence.nii.gz") for n in archive.namelist())
    finally:
        folder.remove()
