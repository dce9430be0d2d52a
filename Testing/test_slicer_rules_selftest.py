"""The self-test's dependency decision (run, install, skip or fail) on extension build machines.

Slicer's extension factory runs the module's ctest (``slicer.testing.runUnitTest``:
``unittest`` on the module's ``test_*`` methods, ``setUp`` first) without a GPU and often
without network. The self-test needs torch, the requirements and the shipped sample data.
"""

from __future__ import annotations

import ast
import os
import socket
import sys

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
