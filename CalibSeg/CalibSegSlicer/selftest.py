"""Self-test of the CalibSeg module inside 3D Slicer (Reload and Test, or ctest).

Runs the whole path on the embedded sample case with a tiny untrained model:
background process inference, nodes, overlays, reliability diagram, temperature
change, comparison layout and a bad reference.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from CalibSegLib.errors import CalibSegError
from CalibSegSlicer import arrays


class CalibSegTest(ScriptedLoadableModuleTest):
    """Slicer's test runner calls :meth:`runTest`."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CalibSegWholePath()

    def test_CalibSegWholePath(self):
        from CalibSegLib.data import sample_case
        from CalibSegLib.models.testing import tiny_model
        from CalibSegSlicer import plots
        from CalibSegSlicer.logic import CalibSegLogic, loadModel
        from CalibSegSlicer.process import InferenceJob, loadPrediction

        self.delayDisplay("Loading the sample case")
        case = sample_case("mni-t1", resolution_mm=4.0)
        volume = arrays.newVolumeNode(case.image, case.affine, "mni-t1")
        slicer.mrmlScene.AddNode(volume)
        volume.CreateDefaultDisplayNodes()
        reference = arrays.newVolumeNode(case.labels.astype(np.int16), case.affine, "reference",
                                         "vtkMRMLLabelMapVolumeNode")
        slicer.mrmlScene.AddNode(reference)
        reference.CreateDefaultDisplayNodes()
        folder = tiny_model(os.path.join(tempfile.mkdtemp(prefix="CalibSegTest-"), "tiny"),
                            head="prototype", class_names=list(case.class_names))

        self.delayDisplay("Inference in a background process")
        logic = CalibSegLogic(slicer.mrmlScene)
        image, affine = logic.inputArray(volume)
        job = InferenceJob(folder, "cpu")
        job.writeInput(image, affine)
        job.start()
        state = job.wait(timeout=300)
        self.assertEqual(state, "finished", job.error)
        prediction = loadPrediction(job.outputPath)
        job.cleanup()
        self.assertFalse(os.path.exists(job.tempDir))

        self.delayDisplay("Showing results")
        before = arrays.arrayFromNode(volume)[0].copy()
        logic.addPrediction(volume, loadModel(folder), prediction, slot="A", folder=folder)
        logic.addPrediction(volume, loadModel(folder), prediction, slot="B", folder=folder)
        confidence = logic.node("A", "confidence")
        np.testing.assert_allclose(arrays.affineFromNode(confidence), case.affine)
        np.testing.assert_array_equal(arrays.arrayFromNode(volume)[0], before)

        self.delayDisplay("Reliability diagram and temperature")
        logic.setReference(reference)
        chart = slicer.mrmlScene.GetNodeByID(logic.chartNodeID)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 5)
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
        bad = arrays.newVolumeNode(case.labels.astype(np.int16) + 5, case.affine, "bad",
                                   "vtkMRMLLabelMapVolumeNode")
        slicer.mrmlScene.AddNode(bad)
        count = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(CalibSegError):
            logic.setReference(bad)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("CalibSeg self-test passed")
