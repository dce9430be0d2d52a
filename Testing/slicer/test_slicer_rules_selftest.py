"""The self-test's dependency decision (run, install, skip or fail) on extension build machines.

Slicer's extension factory runs the module's ctest (``slicer.testing.runUnitTest``:
``unittest`` on the module's ``test_*`` methods, ``setUp`` first) without a GPU and often
without network. The self-test needs torch, the requirements and the shipped sample data.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from extension_layout import MODULE_DIR, ROOT, read

sys.path.insert(0, MODULE_DIR)
from CalibSegSlicer import selftestsetup  # noqa: E402
from CalibSegSlicer.selftestsetup import plan  # noqa: E402

REQUIREMENTS = os.path.join(ROOT, "Resources", "requirements.txt")


@pytest.mark.parametrize("missing, samples, network, allowed, action", [
    ([], [], False, True, "run"),
    ([], [], True, False, "run"),
    (["monai>=1.5,<1.7"], [], True, True, "install"),
    (["torch>=2.4"], [], False, True, "skip"),
    (["torch>=2.4", "monai>=1.5,<1.7"], [], True, False, "skip"),
    ([], ["CalibSeg file SampleData/x not found"], True, True, "fail"),
    (["monai>=1.5,<1.7"], ["CalibSeg file SampleData/x not found"], False, True, "fail"),
])
def test_plan(missing, samples, network, allowed, action):
    decision = plan(missing, samples, network, allowed)
    assert decision.action == action
    if action == "skip":
        assert decision.reason.startswith("CalibSeg self-test skipped")
        for name in missing:
            assert name in decision.reason
        assert ("no network" in decision.reason) == allowed
        assert (selftestsetup.INSTALL_VARIABLE in decision.reason) == (not allowed)
    if action == "fail":
        assert "sample data is missing" in decision.reason


def test_missing_packages_lists_an_old_torch_first():
    versions = {"torch": "2.1.0", "monai": "1.5.2"}

    def versionOf(name):
        return versions[name.lower()]

    missing = selftestsetup.missingPackages(REQUIREMENTS, versionOf)
    assert missing[0] == "torch>=2.4"
    assert not any(m.startswith("monai") for m in missing)
    assert any(m.startswith("nibabel") for m in missing)
    versions["torch"] = "2.8.0+cpu"
    assert "torch>=2.4" not in selftestsetup.missingPackages(REQUIREMENTS, versionOf)


def test_missing_sample_files(tmp_path):
    assert selftestsetup.missingSampleFiles() == []
    (tmp_path / "mod").mkdir()
    assert len(selftestsetup.missingSampleFiles(str(tmp_path / "mod"))) == 2


def test_network_probe_against_local_sockets():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert selftestsetup.networkAvailable(server.getsockname(), timeout=2.0)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
    assert not selftestsetup.networkAvailable(address, timeout=2.0)


def test_install_switch():
    assert selftestsetup.installAllowed({})
    assert selftestsetup.installAllowed({"CALIBSEG_SELFTEST_INSTALL": "1"})
    for value in ("0", "no", "false", "OFF"):
        assert not selftestsetup.installAllowed({"CALIBSEG_SELFTEST_INSTALL": value})


def test_current_plan_here_runs():
    """This test environment has every requirement and the sample: the self-test would run."""
    assert selftestsetup.currentPlan().action == "run"


def test_self_test_applies_the_plan_in_setup():
    """ctest runs ``setUp`` before each ``test_*``: the plan is applied there."""
    tree = ast.parse(read(os.path.join(MODULE_DIR, "CalibSegSlicer", "selftest.py")))
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef)
                      and n.name == "CalibSegTest")
    methods = {f.name: ast.unparse(f) for f in test_class.body if isinstance(f, ast.FunctionDef)}
    setup = methods["setUp"]
    assert "selftestsetup.currentPlan()" in setup
    assert "self.skipTest(preparation.reason)" in setup
    assert "self.fail(preparation.reason)" in setup
    assert "installer.ensureDependencies()" in setup
    assert [n for n in methods if n.startswith("test_")] == ["test_CalibSegWholePath"]
    body = methods["test_CalibSegWholePath"]
    assert "registerSampleData()" in body and "downloadSamples(sampledata.SAMPLE_NAME)" in body


SELFTEST_SCRIPT = textwrap.dedent('''
    import hashlib, os, sys, tempfile, types, unittest, urllib.request
    sys.path.insert(0, sys.argv[1])
    import slicer
    sys.path.insert(0, sys.argv[2])
    from logic_support import new_scene

    scene = new_scene()   # real MRML (slicer-core) as slicer.mrmlScene

    base = types.ModuleType("slicer.ScriptedLoadableModule")
    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            print("self-test:", message)
    base.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    sys.modules[base.__name__] = slicer.ScriptedLoadableModule = base

    # SampleData as in Slicer 5.10: copy each URI into the cache, check the checksum, load
    # the file with MRML's storage node for its file type.
    sources = {}
    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kw):
            sources[kw["sampleName"]] = kw
        def downloadSamples(self, name):
            kw, cache, nodes = sources[name], tempfile.mkdtemp(), []
            for uri, fileName, nodeName, checksum, fileType in zip(
                    kw["uris"], kw["fileNames"], kw["nodeNames"], kw["checksums"],
                    kw["loadFileTypes"]):
                path = os.path.join(cache, fileName)
                urllib.request.urlretrieve(uri, path)
                algo, digest = checksum.split(":")
                assert hashlib.new(algo, open(path, "rb").read()).hexdigest() == digest
                kind = {"VolumeFile": ("vtkMRMLScalarVolumeNode",
                                       "vtkMRMLVolumeArchetypeStorageNode"),
                        "SegmentationFile": ("vtkMRMLSegmentationNode",
                                             "vtkMRMLSegmentationStorageNode")}[fileType]
                node = slicer.mrmlScene.AddNewNodeByClass(kind[0], nodeName)
                storage = slicer.mrmlScene.AddNewNodeByClass(kind[1])
                storage.SetFileName(path)
                assert storage.ReadData(node)
                node.SetAndObserveStorageNodeID(storage.GetID())
                nodes.append(node)
            return nodes
    sample = types.ModuleType("SampleData")
    sample.SampleDataLogic = SampleDataLogic
    sys.modules["SampleData"] = sample

    from CalibSegSlicer.selftest import CalibSegTest
    result = unittest.TextTestRunner(verbosity=2).run(
        unittest.TestLoader().loadTestsFromTestCase(CalibSegTest))
    print("SELFTEST", "OK" if result.wasSuccessful() and not result.skipped else "FAILED")
''')


@pytest.mark.mrml
@pytest.mark.slow
def test_self_test_passes_on_real_mrml(tmp_path):
    """``CalibSegTest`` as ctest runs it (unittest on its ``test_*``), on slicer-core's MRML,
    with stand-ins only for the test base class and the SampleData module."""
    pytest.importorskip("slicer")
    support = os.path.join(ROOT, "Testing", "slicer")
    out = subprocess.run([sys.executable, "-c", SELFTEST_SCRIPT, MODULE_DIR, support],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "SELFTEST OK" in out.stdout, (out.stdout + out.stderr)[-4000:]
