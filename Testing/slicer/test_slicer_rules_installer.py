"""Dependency installation inside Slicer, with fakes of ``slicer.util`` and ``PyTorchUtils``.

Rules: torch comes only from the PyTorch extension
(``PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=...)``), and
its version is checked before anything else; the other packages go through
``slicer.util.pip_install(list_of_arguments)`` (``pip install <arguments>`` on Slicer 5.10 and
5.12) and must never install, upgrade or replace torch, numpy or SimpleITK. The constraints
file is checked against pip's real resolver with local wheels (no network).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import types
import zipfile

import pytest
from extension_layout import MODULE_DIR, ROOT

sys.path.insert(0, MODULE_DIR)
from CalibSegSlicer import installer  # noqa: E402

from CalibSegLib.errors import CalibSegError  # noqa: E402

REQUIREMENTS = os.path.join(ROOT, "Resources", "requirements.txt")
NEVER_BY_PIP = ("torch", "numpy", "simpleitk")


def lowest(requirement: str) -> str:
    """The lowest version a requirement allows (its ``>=`` bound), as a fake pip installs."""
    from packaging.requirements import Requirement

    bounds = [s.version for s in Requirement(requirement).specifier if s.operator == ">="]
    return bounds[0] if bounds else "1.0"


class FakeEnvironment:
    """Installed distributions, a recording ``slicer`` module and a fake PyTorch extension."""

    def __init__(self, versions: dict[str, str], confirm: bool = True,
                 torchAccepted: bool = True, pytorchExtension: bool = True):
        self.versions = {installer.normalise(k): v for k, v in versions.items()}
        self.pipCalls: list[tuple[list[str], str]] = []
        self.torchCalls: list[dict] = []
        self.questions: list[str] = []
        self.confirm = confirm
        self.torchAccepted = torchAccepted
        self.pytorchExtension = pytorchExtension

    def versionOf(self, name: str) -> str:
        return self.versions[installer.normalise(name)]

    # slicer.util
    def pip_install(self, requirements):
        assert isinstance(requirements, list)
        constraints = requirements[requirements.index("-c") + 1]
        with open(constraints, encoding="utf-8") as fh:
            self.pipCalls.append((list(requirements), fh.read()))
        for argument in requirements:
            if not argument.startswith("-") and argument != constraints:
                self.versions[installer.parseRequirements(argument)[0][0]] = lowest(argument)

    def confirmOkCancelDisplay(self, text, title=None, **kwargs):
        self.questions.append(text)
        return self.confirm

    # PyTorchUtils
    def installTorch(self, askConfirmation=False, forceComputationBackend=None,
                     torchVersionRequirement=None, torchvisionVersionRequirement=None):
        self.torchCalls.append({"askConfirmation": askConfirmation,
                                "torchVersionRequirement": torchVersionRequirement})
        if not self.torchAccepted:
            return None
        self.versions["torch"] = "2.9.0"
        return types.ModuleType("torch")

    def install(self, monkeypatch):
        slicer = types.ModuleType("slicer")
        slicer.util = types.SimpleNamespace(
            pip_install=self.pip_install, confirmOkCancelDisplay=self.confirmOkCancelDisplay,
            WaitCursor=contextlib.nullcontext)
        slicer.app = types.SimpleNamespace(testingEnabled=lambda: False)
        monkeypatch.setitem(sys.modules, "slicer", slicer)
        if self.pytorchExtension:
            env = self

            class PyTorchUtilsLogic:
                def installTorch(self, **kwargs):
                    return env.installTorch(**kwargs)

            module = types.ModuleType("PyTorchUtils")
            module.PyTorchUtilsLogic = PyTorchUtilsLogic
            monkeypatch.setitem(sys.modules, "PyTorchUtils", module)
        else:
            monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails
        monkeypatch.delitem(sys.modules, "torch", raising=False)
        return self


SLICER_PACKAGES = {"numpy": "2.2.6", "SimpleITK": "2.5.0", "vtk": "9.5.0", "scipy": "1.15.0",
                   "requests": "2.32.0", "pip": "25.0"}


def environment(monkeypatch, torch: str | None = "2.8.0", **kwargs) -> FakeEnvironment:
    versions = dict(SLICER_PACKAGES)
    if torch:
        versions["torch"] = torch
    return FakeEnvironment(versions, **kwargs).install(monkeypatch)


def requirement_names(arguments: list[str]) -> list[str]:
    constraints = arguments[arguments.index("-c") + 1]
    return [installer.parseRequirements(a)[0][0] for a in arguments
            if not a.startswith("-") and a != constraints]


# ------------------------------------------------------------------------------------ tests
def test_requirements_split_keeps_torch_apart_and_drops_slicer_packages():
    path = installer.requirementsPath(MODULE_DIR)
    assert os.path.samefile(path, REQUIREMENTS)
    pip, torch = installer.splitRequirements(open(path, encoding="utf-8").read())
    names = [installer.parseRequirements(line)[0][0] for line in pip]
    assert torch is not None and installer.torchVersionSpec(torch) == ">=2.4"
    assert not set(names) & set(NEVER_BY_PIP)
    assert "monai" in names


def test_requirement_parsing():
    text = """
    # comment
    -r other.txt
    torch>=2.4 ; platform_system != "Emscripten"
    NumPy>=1.26
    SimpleITK>=2.3
    monai[nibabel]>=1.5,<1.7   # trailing comment
    Safe_Tensors>=0.4
    """
    pip, torch = installer.splitRequirements(text)
    assert pip == ["monai[nibabel]>=1.5,<1.7", "Safe_Tensors>=0.4"]
    assert installer.torchVersionSpec(torch) == ">=2.4"
    assert installer.torchVersionSpec("torch") is None
    assert installer.normalise("Safe_Tensors") == "safe-tensors"
    missing = installer.missingRequirements(
        ["monai>=1.5,<1.7", "nibabel>=5.2", "absent>=1"],
        versionOf={"monai": "1.5.1", "nibabel": "5.0.0"}.__getitem__)
    assert missing == ["nibabel>=5.2", "absent>=1"]


def test_too_old_torch_asks_the_pytorch_extension_not_pip(monkeypatch):
    env = environment(monkeypatch, torch="2.1.0", torchAccepted=False)
    assert installer.ensureDependencies(REQUIREMENTS, env.versionOf) is False
    assert env.torchCalls == [{"askConfirmation": True, "torchVersionRequirement": ">=2.4"}]
    assert env.pipCalls == []


def test_missing_torch_asks_the_pytorch_extension_then_installs_the_rest(monkeypatch):
    env = environment(monkeypatch, torch=None)
    assert installer.ensureDependencies(REQUIREMENTS, env.versionOf) is True
    assert env.torchCalls == [{"askConfirmation": True, "torchVersionRequirement": ">=2.4"}]
    assert len(env.pipCalls) == 1
    arguments, constraints = env.pipCalls[0]
    assert "torch==2.9.0" in constraints.splitlines()  # the extension's new torch is pinned


def test_pip_never_names_or_replaces_torch_numpy_simpleitk(monkeypatch):
    env = environment(monkeypatch, torch="2.8.0+cu126")
    assert installer.ensureDependencies(REQUIREMENTS, env.versionOf) is True
    assert env.torchCalls == []  # torch 2.8 meets >=2.4: the extension is not asked
    (arguments, constraints), = env.pipCalls
    names = requirement_names(arguments)
    assert "monai" in names and "nibabel" in names
    assert not set(names) & set(NEVER_BY_PIP)
    assert not set(arguments) & set(installer.FORBIDDEN_PIP_OPTIONS)
    assert not any(a.startswith(("--upgrade", "--force", "--ignore-installed")) for a in arguments)
    pins = dict(line.split("==") for line in constraints.split())
    assert pins["torch"] == "2.8.0+cu126"
    assert pins["numpy"] == SLICER_PACKAGES["numpy"]
    assert pins["simpleitk"] == SLICER_PACKAGES["SimpleITK"]


def test_user_declining_installs_nothing(monkeypatch):
    env = environment(monkeypatch, confirm=False)
    assert installer.ensureDependencies(REQUIREMENTS, env.versionOf) is False
    assert env.pipCalls == [] and len(env.questions) == 1
    assert "monai" in env.questions[0]


def test_nothing_missing_installs_nothing(monkeypatch):
    env = environment(monkeypatch)
    pip, _ = installer.splitRequirements(open(REQUIREMENTS, encoding="utf-8").read())
    for line in pip:
        env.versions[installer.parseRequirements(line)[0][0]] = lowest(line)
    assert installer.ensureDependencies(REQUIREMENTS, env.versionOf) is True
    assert env.pipCalls == [] and env.questions == []


def test_missing_pytorch_extension_is_one_clear_error(monkeypatch):
    env = environment(monkeypatch, torch=None, pytorchExtension=False)
    with pytest.raises(CalibSegError, match="PyTorch extension"):
        installer.ensureDependencies(REQUIREMENTS, env.versionOf)
    assert env.pipCalls == []


def test_pip_failure_is_one_clear_error(monkeypatch):
    env = environment(monkeypatch)

    def failing(requirements):
        raise subprocess.CalledProcessError(1, ["pip", "install"])

    sys.modules["slicer"].util.pip_install = failing
    with pytest.raises(CalibSegError, match="does not replace Slicer's PyTorch"):
        installer.ensureDependencies(REQUIREMENTS, env.versionOf)


def test_pip_arguments_refuse_protected_packages():
    with pytest.raises(ValueError):
        installer.pipArguments(["monai>=1.5", "numpy>=2"], "c.txt")
    assert installer.pipArguments(["monai>=1.5"], "c.txt") == ["-c", "c.txt", "monai>=1.5"]


# ----------------------------------------------------------- oracle: pip's own resolver
def _wheel(folder, name: str, version: str, requires: list[str]) -> None:
    """A minimal pure-Python wheel (metadata only)."""
    info = f"{name}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    files = {f"{info}/METADATA": "\n".join(metadata) + "\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n",
             f"{name}/__init__.py": ""}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(os.path.join(folder, f"{name}-{version}-py3-none-any.whl"), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def _pip_dry_run(arguments: list[str], cwd) -> subprocess.CompletedProcess:
    """pip's resolver on this environment, with no pip configuration and no index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                           "--disable-pip-version-check", "--quiet", "--report", "-",
                           *arguments], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def test_constraints_stop_pip_from_replacing_numpy_and_torch(tmp_path):
    """A package that wants another numpy/torch makes pip fail instead of replacing them."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "numpy", "99.0", [])
    _wheel(wheels, "torch", "99.0", [])
    _wheel(wheels, "wantsnewnumpy", "1.0", ["numpy>=99"])
    _wheel(wheels, "wantsnewtorch", "1.0", ["torch>=99"])
    _wheel(wheels, "harmless", "1.0", ["numpy"])
    links = ["--find-links", str(wheels)]
    for package, replaced in (("wantsnewnumpy", "numpy"), ("wantsnewtorch", "torch")):
        unguarded = _pip_dry_run([*links, package], tmp_path)
        assert unguarded.returncode == 0, unguarded.stderr
        planned = {i["metadata"]["name"] for i in json.loads(unguarded.stdout)["install"]}
        assert replaced in planned  # without constraints pip would replace it
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(installer.constraintsText())
    assert "numpy==" in constraints.read_text() and "torch==" in constraints.read_text()
    for package in ("wantsnewnumpy", "wantsnewtorch"):
        guarded = _pip_dry_run([*links, *installer.pipArguments([package], str(constraints))],
                               tmp_path)
        assert guarded.returncode != 0
        assert "ResolutionImpossible" in guarded.stderr or "conflict" in guarded.stderr.lower()
    fine = _pip_dry_run([*links, *installer.pipArguments(["harmless"], str(constraints))],
                        tmp_path)
    assert fine.returncode == 0, fine.stderr
    assert [i["metadata"]["name"] for i in json.loads(fine.stdout)["install"]] == ["harmless"]
