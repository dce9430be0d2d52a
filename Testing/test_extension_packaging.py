"""Packaging of the Slicer extension: every file listed in CMake, index file, installer.

A Python file or resource that is not listed in the CMake files is silently left
out of the installed extension. These tests compare the lists with the files
tracked in the repository and print exactly which lines to add.

Regenerate ``CalibSeg/CalibSegLibFiles.cmake`` after adding library files::

    .venv/bin/python Testing/test_extension_packaging.py --write-cmake
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_DIR = os.path.join(ROOT, "CalibSeg")
LIB_CMAKE = os.path.join(MODULE_DIR, "CalibSegLibFiles.cmake")
SKIP_PARTS = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo")


def repository_files(folder: str) -> list[str]:
    """Files under ``folder`` (relative to the repository root), as the repository tracks them."""
    try:
        out = subprocess.run(["git", "ls-files", "--", folder], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        files = [f for f in out if os.path.exists(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file
        files = []
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            files += [os.path.relpath(os.path.join(base, n), ROOT).replace(os.sep, "/")
                      for n in names]
    return sorted(f for f in files if not any(p in f.split("/") for p in SKIP_PARTS)
                  and not f.endswith(SKIP_SUFFIXES))


def cmake_list(text: str, variable: str, substitutions: dict | None = None) -> list[str]:
    """Entries of ``set(variable ...)`` in CMake ``text``."""
    match = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    body = re.sub(r"#[^\n]*", "", match.group(1))
    items = body.split()
    for key, value in (substitutions or {}).items():
        items = [i.replace("${" + key + "}", value) for i in items]
    return items


def lib_cmake_text(files: list[str]) -> str:
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith(".py")]
    lines = ["# CalibSegLib files installed with the Slicer extension (paths from the repository",
             "# root). Keep in sync with the repository: Testing/test_extension_packaging.py",
             "# checks it and `python Testing/test_extension_packaging.py --write-cmake`",
             "# regenerates it.", "set(CALIBSEGLIB_PYTHON_SCRIPTS"]
    lines += [f"  {f}" for f in scripts] + ["  )", "", "set(CALIBSEGLIB_PYTHON_RESOURCES"]
    lines += [f"  {f}" for f in resources] + ["  )", ""]
    return "\n".join(lines)


def _missing_message(missing, extra, where):
    parts = []
    if missing:
        parts.append(f"Add these lines to {where}:\n" + "\n".join(f"  {m}" for m in missing))
    if extra:
        parts.append(f"Remove these lines from {where} (no such file):\n"
                     + "\n".join(f"  {e}" for e in extra))
    return "\n".join(parts)


def test_module_files_listed_in_cmake():
    text = open(os.path.join(MODULE_DIR, "CMakeLists.txt"), encoding="utf-8").read()
    subst = {"MODULE_NAME": "CalibSeg"}
    listed = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS", subst)
                 + cmake_list(text, "MODULE_PYTHON_RESOURCES", subst))
    files = {os.path.relpath(os.path.join(ROOT, f), MODULE_DIR).replace(os.sep, "/")
             for f in repository_files("CalibSeg")}
    files = {f for f in files if f not in ("CMakeLists.txt", "CalibSegLibFiles.cmake")}
    missing = sorted(files - listed)
    extra = sorted(f for f in listed if not os.path.exists(os.path.join(MODULE_DIR, f)))
    assert not missing and not extra, _missing_message(
        missing, extra, "CalibSeg/CMakeLists.txt (MODULE_PYTHON_SCRIPTS / _RESOURCES)")


def test_library_files_listed_in_cmake():
    text = open(LIB_CMAKE, encoding="utf-8").read()
    scripts = cmake_list(text, "CALIBSEGLIB_PYTHON_SCRIPTS")
    resources = cmake_list(text, "CALIBSEGLIB_PYTHON_RESOURCES")
    files = repository_files("CalibSegLib")
    missing = sorted(set(files) - set(scripts) - set(resources))
    extra = sorted(f for f in scripts + resources if not os.path.exists(os.path.join(ROOT, f)))
    assert not missing and not extra, _missing_message(
        missing, extra, "CalibSeg/CalibSegLibFiles.cmake "
        "(or run: python Testing/test_extension_packaging.py --write-cmake)")
    assert all(f.endswith(".py") for f in scripts)
    assert not any(f.endswith(".py") for f in resources)
    assert "CalibSegLib/__init__.py" in scripts


def test_top_level_cmake_meta_information():
    text = open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8").read()
    assert re.search(r"project\(\s*CalibSeg\s*\)", text)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        assert re.search(r"set\(\s*" + key + r"\s", text), key
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "add_subdirectory(CalibSeg)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                 "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line
    # Screenshots named in the meta-information exist in the repository.
    shots = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s+"([^"]*)"', text).group(1).split()
    for url in shots + [re.search(r'set\(EXTENSION_ICONURL\s+"([^"]*)"', text).group(1)]:
        relative = url.split("/main/", 1)[1]
        assert os.path.isfile(os.path.join(ROOT, relative)), relative


def test_module_cmake_builds_tests_and_installs_requirements():
    text = open(os.path.join(MODULE_DIR, "CMakeLists.txt"), encoding="utf-8").read()
    assert "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "ctkMacroCompilePythonScript(" in text and "CalibSegLibFiles.cmake" in text
    assert "Resources/requirements.txt" in text
    assert os.path.isfile(os.path.join(ROOT, "Resources", "requirements.txt"))


def test_extension_index_file():
    with open(os.path.join(ROOT, "CalibSeg.json"), encoding="utf-8") as fh:
        entry = json.load(fh)
    assert entry["$schema"] == ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                "slicer-extension-catalog-entry-schema-v1.0.1.json")
    for key in ("category", "scm_url", "scm_revision", "build_dependencies", "tier"):
        assert key in entry, key
    assert entry["category"] == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://") and entry["scm_url"].endswith(".git")
    assert entry["tier"] in (1, 3, 5)


# ---------------------------------------------------------------------------------- installer
def _installer():
    sys.path.insert(0, MODULE_DIR)
    from CalibSegSlicer import installer

    return installer


def test_installer_reads_the_project_requirements():
    inst = _installer()
    path = inst.requirementsPath(MODULE_DIR)
    assert os.path.samefile(path, os.path.join(ROOT, "Resources", "requirements.txt"))
    pip, torch = inst.splitRequirements(open(path, encoding="utf-8").read())
    names = [inst.parseRequirements(line)[0][0] for line in pip]
    assert torch is not None and torch.startswith("torch")
    assert "torch" not in names
    assert "numpy" not in names and "simpleitk" not in names  # Slicer's own
    assert "monai" in names  # a real dependency is kept


def test_installer_filtering_and_parsing():
    inst = _installer()
    text = """
    # comment
    -r other.txt
    --index-url https://example.org/simple
    torch>=2.4 ; platform_system != "Emscripten"
    NumPy>=1.26
    SimpleITK>=2.3
    monai[nibabel]>=1.5,<1.7   # trailing comment
    Safe_Tensors>=0.4
    """
    pip, torch = inst.splitRequirements(text)
    assert pip == ["monai[nibabel]>=1.5,<1.7", "Safe_Tensors>=0.4"]
    assert inst.torchVersionSpec(torch) == ">=2.4"
    assert inst.torchVersionSpec("torch") is None
    assert inst.normalise("Safe_Tensors") == "safe-tensors"


def test_installer_missing_requirements():
    inst = _installer()
    versions = {"monai": "1.5.1", "nibabel": "5.0.0"}

    def version_of(name):
        return versions[name.lower()]

    missing = inst.missingRequirements(["monai>=1.5,<1.7", "nibabel>=5.2", "absent>=1"],
                                       versionOf=version_of)
    assert missing == ["nibabel>=5.2", "absent>=1"]
    # The test environment itself satisfies its own requirements (except the Slicer-owned).
    pip, _ = inst.splitRequirements(open(inst.requirementsPath(MODULE_DIR)).read())
    assert inst.missingRequirements([p for p in pip if not p.startswith("numba")]) == []


# ---------------------------------------------------------------------------------- the .ui file
UI_FILE = os.path.join(MODULE_DIR, "Resources", "UI", "CalibSeg.ui")
EXPECTED_CLASSES = {
    "inputSelector": "qMRMLNodeComboBox", "referenceSelector": "qMRMLNodeComboBox",
    "modelAPathLineEdit": "ctkPathLineEdit", "modelBPathLineEdit": "ctkPathLineEdit",
    "deviceComboBox": "QComboBox", "applyButton": "QPushButton", "cancelButton": "QPushButton",
    "progressBar": "QProgressBar", "temperatureSlider": "ctkSliderWidget",
    "fitTemperatureButton": "QPushButton", "overlayComboBox": "QComboBox",
    "opacitySlider": "ctkSliderWidget", "prototypeMapCheckBox": "QCheckBox",
    "compareCheckBox": "QCheckBox", "exportButton": "QPushButton",
    "exportDirectoryButton": "ctkDirectoryButton", "statusLabel": "QLabel",
}


def _ui_widgets() -> dict[str, str]:
    import xml.etree.ElementTree as ET

    tree = ET.parse(UI_FILE)
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


def test_every_widget_the_code_uses_exists_in_the_ui():
    widgets = _ui_widgets()
    used = set()
    for name in ("CalibSeg.py", os.path.join("CalibSegSlicer", "widget.py")):
        text = open(os.path.join(MODULE_DIR, name), encoding="utf-8").read()
        used |= set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used, "the widget uses no self.ui.* names?"
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used in code but absent from CalibSeg.ui: {missing}"
    for name, cls in EXPECTED_CLASSES.items():
        assert widgets.get(name) == cls, f"{name}: {widgets.get(name)} (expected {cls})"


def test_ui_parameter_names_match_the_parameter_node():
    import xml.etree.ElementTree as ET

    names = set()
    for prop in ET.parse(UI_FILE).iter("property"):
        if prop.get("name") == "SlicerParameterName":
            names.add(prop.find("string").text)
    path = os.path.join(MODULE_DIR, "CalibSegSlicer", "parameters.py")
    text = open(path, encoding="utf-8").read()
    fields = set(re.findall(r"^    ([a-zA-Z]+):", text, re.M))
    assert names and names <= fields, sorted(names - fields)


if __name__ == "__main__":
    if "--write-cmake" in sys.argv:
        with open(LIB_CMAKE, "w", encoding="utf-8") as fh:
            fh.write(lib_cmake_text(repository_files("CalibSegLib")))
        print(f"wrote {LIB_CMAKE}")
    else:
        sys.exit(pytest.main([__file__, "-q"]))
