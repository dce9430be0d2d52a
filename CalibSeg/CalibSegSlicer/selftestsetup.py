"""What the self-test needs before it can run, and what to do when something is missing.

The self-test runs a model, so it needs torch (PyTorch extension), the packages of
``requirements.txt`` (monai, ...) and the shipped sample data. The extension build machines
run it through ctest (``--testing``) without a GPU (not needed: the test model is tiny) and
often without network. Rules:

- the sample data is part of the extension: when it is missing the build is broken, so the
  test **fails**;
- nothing missing: **run**;
- packages missing, network reachable and installing allowed: **install** them through
  :mod:`CalibSegSlicer.installer` (the same path a user takes), then run;
- otherwise **skip**, naming the missing packages and the reason (no network, or
  ``CALIBSEG_SELFTEST_INSTALL=0``).

Plain Python (no Slicer): tested headless.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from CalibSegSlicer import installer, locations

#: Set to "0" to forbid the self-test from installing packages (it then skips).
INSTALL_VARIABLE = "CALIBSEG_SELFTEST_INSTALL"
PACKAGE_INDEX = ("pypi.org", 443)


@dataclass(frozen=True)
class SelfTestPlan:
    action: str  #: "run", "install", "skip" or "fail"
    reason: str
    missing: tuple[str, ...] = ()


def missingPackages(requirementsFile: str | None = None, versionOf=None) -> list[str]:
    """Requirement lines (torch first) not satisfied by the installed distributions."""
    with open(requirementsFile or installer.requirementsPath(), encoding="utf-8") as fh:
        pip, torchLine = installer.splitRequirements(fh.read())
    missing = []
    torchVersion = installer.installedVersion(installer.TORCH, versionOf)
    if not installer.satisfies(torchVersion, installer.torchVersionSpec(torchLine)):
        missing.append(torchLine or installer.TORCH)
    return missing + installer.missingRequirements(pip, versionOf)


def missingSampleFiles(base: str | None = None) -> list[str]:
    """Names of shipped sample files that cannot be found."""
    missing = []
    for find in (locations.sampleDataPath, locations.sampleLabelsPath):
        try:
            find(base)
        except FileNotFoundError as exc:
            missing.append(str(exc))
    return missing


def networkAvailable(address: tuple[str, int] = PACKAGE_INDEX, timeout: float = 3.0) -> bool:
    """True when the package index accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def installAllowed(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(INSTALL_VARIABLE, "1").strip().lower() not in ("0", "no", "false", "off")


def plan(missing: list[str], missingSamples: list[str], network: bool,
         allowed: bool) -> SelfTestPlan:
    """The decision described in the module docstring."""
    if missingSamples:
        return SelfTestPlan("fail", "The CalibSeg sample data is missing from the extension: "
                            + "; ".join(missingSamples))
    if not missing:
        return SelfTestPlan("run", "All dependencies are installed.")
    names = ", ".join(missing)
    if not allowed:
        return SelfTestPlan("skip", f"CalibSeg self-test skipped: {names} not installed and "
                            f"{INSTALL_VARIABLE}=0 forbids installing them.", tuple(missing))
    if not network:
        return SelfTestPlan("skip", f"CalibSeg self-test skipped: {names} not installed and "
                            "no network to install them (extension build machine?).",
                            tuple(missing))
    return SelfTestPlan("install", f"Installing {names} for the CalibSeg self-test.",
                        tuple(missing))


def currentPlan() -> SelfTestPlan:
    """The plan for this Slicer (checks the network only when something is missing)."""
    missing = missingPackages()
    samples = missingSampleFiles()
    network = bool(missing) and not samples and installAllowed() and networkAvailable()
    return plan(missing, samples, network, installAllowed())
