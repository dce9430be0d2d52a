"""CalibSeg: calibrated, explainable segmentation in 3D Slicer (module entry point).

Only the module description lives here; its helpers are in the package ``CalibSegSlicer``
(Qt panel ``widget`` and its decisions ``panel``, MRML logic ``logic``, model list
``catalog``, background inference and import ``process``, dependency installation
``installer``, self-test ``selftest``).
"""

from __future__ import annotations

from CalibSegSlicer.reloading import prepareHelperImports

# Before any other helper import: re-import the helpers on "Reload", and in a source checkout
# ("Additional module paths" = <repo>/CalibSeg) make CalibSegLib importable.
prepareHelperImports()

import slicer  # noqa: E402
from CalibSegSlicer.logic import CalibSegLogic  # noqa: E402, F401  (the module's logic, by name)
from CalibSegSlicer.sampledata import registerSampleData  # noqa: E402
from CalibSegSlicer.selftest import CalibSegTest  # noqa: E402, F401  (found by name by Slicer's test runner)
from CalibSegSlicer.widget import CalibSegWidget  # noqa: E402, F401  (found by name by Slicer)
from slicer.ScriptedLoadableModule import ScriptedLoadableModule  # noqa: E402

HELP = """
<p>Run one or two segmentation models on a scan and see where they are unsure:
per-voxel <b>confidence</b> and <b>entropy</b> overlays, <b>prototype</b> explanations
("this looks like that") and, against a reference segmentation, a <b>reliability
diagram</b> with ACE, ECE, MCE and Dice. Change the <b>temperature</b> (or fit it to the
reference) and watch overlays and diagram update; compare two models side by side in
linked views.</p>
<p>Documentation: <a href="https://github.com/calibseg/SlicerCalibSeg/blob/main/docs/slicer.md">
Use in 3D Slicer</a>. Models are folders with a <tt>model.json</tt> card; see the
<a href="https://github.com/calibseg/SlicerCalibSeg#readme">project page</a>.</p>
"""

ACKNOWLEDGEMENT = """
CalibSeg builds on 3D Slicer, PyTorch and MONAI. The sample data is the MNI ICBM152 2009a
template (Fonov et al., NeuroImage 2011).
"""


class CalibSeg(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CalibSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["CalibSeg contributors"]
        self.parent.helpText = HELP
        self.parent.acknowledgementText = ACKNOWLEDGEMENT
        # The sample case is offered by the SampleData module once Slicer has started.
        slicer.app.connect("startupCompleted()", registerSampleData)
