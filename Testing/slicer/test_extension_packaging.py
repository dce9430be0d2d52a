"""Packaging of the Slicer extension: every file listed in CMake.

A Python file or resource that is not listed in the CMake files is silently left
out of the installed extension. These tests compare the lists with the files
tracked in the repository and print exactly which lines to add.

Regenerate ``CalibSeg/CalibSegLibFiles.cmake`` (library files) and
``CalibSeg/CalibSegResourceFiles.cmake`` (requirements, models, sample data) after
adding files::

    .venv/bin/python Testing/slicer/test_extension_packaging.py --write-cmake
"""

from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from extension_layout import (  # noqa: E402
    LIB_CMAKE,
    MODULE_CMAKE,
    MODULE_DIR,
    RESOURCE_CMAKE,
    ROOT,
    library_files,
    module_resources,
    module_scripts,
    read,
    repository_files,
    shared_resources,
    tracked_library_files,
    tracked_shared_resources,
    write_cmake_lists,
)

REGENERATE = "(or run: python Testing/slicer/test_extension_packaging.py --write-cmake)"


def _missing_message(missing, extra, where):
    parts = []
    if missing:
        parts.append(f"Add these lines to {where}:\n" + "\n".join(f"  {m}" for m in missing))
    if extra:
        parts.append(f"Remove these lines from {where} (no such file):\n"
                     + "\n".join(f"  {e}" for e in extra))
    return "\n".join(parts)


def test_module_files_listed_in_cmake():
    listed = set(module_scripts() + module_resources())
    files = {os.path.relpath(os.path.join(ROOT, f), MODULE_DIR).replace(os.sep, "/")
             for f in repository_files("CalibSeg")}
    generated = {os.path.basename(p) for p in (MODULE_CMAKE, LIB_CMAKE, RESOURCE_CMAKE)}
    files = {f for f in files if f not in generated}
    missing = sorted(files - listed)
    extra = sorted(f for f in listed if not os.path.exists(os.path.join(MODULE_DIR, f)))
    assert not missing and not extra, _missing_message(
        missing, extra, "CalibSeg/CMakeLists.txt (MODULE_PYTHON_SCRIPTS / _RESOURCES)")


def test_library_files_listed_in_cmake():
    scripts, resources = library_files()
    files = tracked_library_files()
    missing = sorted(set(files) - set(scripts) - set(resources))
    extra = sorted(f for f in scripts + resources if not os.path.exists(os.path.join(ROOT, f)))
    assert not missing and not extra, _missing_message(
        missing, extra, f"CalibSeg/CalibSegLibFiles.cmake {REGENERATE}")
    assert all(f.endswith(".py") for f in scripts)
    assert not any(f.endswith(".py") for f in resources)
    assert "CalibSegLib/__init__.py" in scripts


def test_shared_resources_listed_in_cmake():
    """Requirements, every file of every demo model and the sample data are installed."""
    listed = shared_resources()
    files = tracked_shared_resources()
    missing = sorted(set(files) - set(listed))
    extra = sorted(f for f in listed if not os.path.isfile(os.path.join(ROOT, "Resources", f)))
    assert not missing and not extra, _missing_message(
        missing, extra, f"CalibSeg/CalibSegResourceFiles.cmake {REGENERATE}")
    assert "requirements.txt" in listed
    models = {f.split("/")[1] for f in listed if f.startswith("Models/")}
    assert models == {"dicece", "dicece-hardace", "dicece-softace"}
    for model in models:
        assert f"Models/{model}/model.json" in listed
        assert f"Models/{model}/model.safetensors" in listed


def test_top_level_cmake_meta_information():
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    assert re.search(r"project\(\s*CalibSeg\s*\)", text)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        assert re.search(r"set\(\s*" + key + r"\s", text), key
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', text)
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    for line in ("include(${Slicer_USE_FILE})",
                 "add_subdirectory(CalibSeg)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                 "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line
    assert re.search(r"find_package\(Slicer( [0-9.]+)? REQUIRED\)", text)


def test_module_cmake_builds_tests_and_installs_resources():
    text = read(MODULE_CMAKE)
    assert "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "ctkMacroCompilePythonScript(" in text and "CalibSegLibFiles.cmake" in text
    assert "include(${CMAKE_CURRENT_SOURCE_DIR}/CalibSegResourceFiles.cmake)" in text
    # Each shared resource is copied into the build tree (ctest runs there) and installed.
    loop = text[text.index("foreach(resource ${CALIBSEG_SHARED_RESOURCES})"):]
    loop = loop[:loop.index("endforeach()")]
    assert "configure_file(" in loop and "COPYONLY" in loop
    assert "install(" in loop and "${CALIBSEG_RESOURCES_SUBDIR}/${resource_dir}" in loop
    assert "${CALIBSEG_RESOURCES_SOURCE_DIR}/${resource}" in loop
    assert re.search(r"set\(CALIBSEG_RESOURCES_SOURCE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}"
                     r"/\.\./Resources\)", text)


def test_generated_lists_are_what_write_cmake_writes(tmp_path, monkeypatch):
    """``--write-cmake`` reproduces the committed lists (so regenerating them is safe)."""
    import extension_layout

    monkeypatch.setattr(extension_layout, "LIB_CMAKE", str(tmp_path / "lib.cmake"))
    monkeypatch.setattr(extension_layout, "RESOURCE_CMAKE", str(tmp_path / "res.cmake"))
    lib, res = extension_layout.write_cmake_lists()
    assert extension_layout.cmake_list(read(res), "CALIBSEG_SHARED_RESOURCES") == \
        shared_resources()
    text = read(lib)
    assert extension_layout.cmake_list(text, "CALIBSEGLIB_PYTHON_SCRIPTS") == library_files()[0]


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
    for name in ("CalibSeg.py", os.path.join("CalibSegSlicer", "widget.py"),
                 os.path.join("CalibSegSlicer", "panel.py")):
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
        for written in write_cmake_lists():
            print(f"wrote {written}")
    else:
        sys.exit(pytest.main([__file__, "-q"]))
