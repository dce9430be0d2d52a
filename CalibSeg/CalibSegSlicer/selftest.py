"""Self-test of the CalibSeg module inside 3D Slicer (Reload and Test, or ctest).

Runs the path a user takes on the shipped sample case ("Download sample" in the SampleData
module) with a tiny untrained model: background process inference, nodes, overlays,
reliability diagram against the sample's tissue segmentation, temperature change,
comparison layout and a bad reference. Before that, :mod:`CalibSegSlicer.selftestsetup`
decides whether the dependencies are there, are installed first, or the test is skipped
(build machines without network).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from CalibSegLib.errors import CalibSegError
from CalibSegSlicer import arrays, installer, selftestsetup


class CalibSegTest(ScriptedLoadableModuleTest):
    """Slicer's test runner calls :meth:`runTest` (GUI) or the ``test_*`` methods (ctest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        preparation = selftestsetup.currentPlan()
        if preparation.action == "fail":
            self.fail(preparation.reason)
        if preparation.action == "skip":
            self.skipTest(preparation.reason)
        if preparation.action == "install":
            self.delayDisplay(preparation.reason)
            if not installer.ensureDependencies():
                self.skipTest("CalibSeg self-test skipped: the dependencies were not installed.")

    def runTest(self):
        self.setUp()
        self.test_CalibSegWholePath()

    def test_CalibSegWholePath(self):
        import SampleData

        from CalibSegLib.data.case import MNI_CLASS_NAMES
        from CalibSegLib.models.testing import tiny_model
        from CalibSegSlicer import plots, sampledata
        from CalibSegSlicer.catalog import loadModel
        from CalibSegSlicer.logic import CalibSegLogic
        from CalibSegSlicer.process import InferenceJob

        self.delayDisplay("Loading the sample case through the SampleData module")
        self.assertTrue(sampledata.registerSampleData())
        volume, segmentation = SampleData.SampleDataLogic().downloadSamples(sampledata.SAMPLE_NAME)
        self.assertTrue(volume.IsA("vtkMRMLScalarVolumeNode"))
        self.assertTrue(segmentation.IsA("vtkMRMLSegmentationNode"))
        self.assertEqual(volume.GetName(), sampledata.VOLUME_NODE_NAME)
        folder = tiny_model(os.path.join(tempfile.mkdtemp(prefix="CalibSegTest-"), "tiny"),
                            head="prototype", class_names=list(MNI_CLASS_NAMES))

        self.delayDisplay("Inference in a background process")
        logic = CalibSegLogic(slicer.mrmlScene)
        image, affine = logic.inputArray(volume)
        job = InferenceJob(folder, "cpu")
        job.writeInput(image, affine)
        job.start()
        state = job.wait(timeout=300)
        self.assertEqual(state, "finished", job.error)
        prediction = job.result()  # memory-mapped hand-over file
        job.cleanup()
        self.assertFalse(os.path.exists(job.tempDir))

        self.delayDisplay("Showing results")
        before = arrays.arrayFromNode(volume)[0].copy()
        logic.addPrediction(volume, loadModel(folder), prediction, slot="A")
        logic.addPrediction(volume, loadModel(folder), prediction, slot="B")
        confidence = logic.node("A", "confidence")
        np.testing.assert_allclose(arrays.affineFromNode(confidence), affine)
        np.testing.assert_array_equal(arrays.arrayFromNode(volume)[0], before)

        self.delayDisplay("Reliability diagram against the sample's segmentation, temperature")
        logic.setReference(segmentation)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(logic.chartNodeID))
        ids = dict(logic.results["A"].nodeIDs)
        logic.setTemperature(2.0)
        self.assertEqual(ids["confidence"], logic.results["A"].nodeIDs["confidence"])
        table = slicer.mrmlScene.GetNodeByID(logic.metricsTableID)
        values = plots.readMetricsTable(table)
        self.assertAlmostEqual(values[logic.columnName("A")]["temperature"], 2.0)

        self.delayDisplay("Layouts")
        logic.showLayout(compare=True)
        logic.showLayout(compare=False)

        self.delayDisplay("A bad reference is refused without leaving nodes behind")
        labels = np.zeros(image.shape, np.int16) + 5
        bad = arrays.newVolumeNode(labels, affine, "bad", "vtkMRMLLabelMapVolumeNode")
        slicer.mrmlScene.AddNode(bad)
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CalibSegError):
            logic.setReference(bad)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("CalibSeg self-test passed")
