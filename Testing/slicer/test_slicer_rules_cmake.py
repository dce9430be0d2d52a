"""The extension's CMake files, configured and installed by a real CMake against a stand-in
Slicer package.

The stand-in provides what an extension uses from ``find_package(Slicer)``: the version file
(``SlicerConfigVersion.cmake`` compares ``PACKAGE_VERSION`` with the requested one), the
Python version Slicer ships (``Slicer_REQUIRED_PYTHON_VERSION``), the scripted-module folders,
and the two macros with the install behaviour of Slicer 5.10/CTK:
``slicerMacroBuildScriptedModule`` refuses a listed file that does not exist and calls
``ctkMacroCompilePythonScript``, which copies scripts (``.py`` appended when missing) and
resources, sub-folders kept, into the build tree's ``qt-scripted-modules`` folder and installs
that whole folder. The installed tree must be exactly what ``extension_layout`` computes.
Skipped where no ``cmake`` or C/C++ compiler is installed (``project()`` enables C and C++).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from extension_layout import ROOT, installed_files

pytestmark = pytest.mark.skipif(
    not shutil.which("cmake") or not (shutil.which("c++") or shutil.which("g++")),
    reason="cmake and a C++ compiler are needed to configure the extension")

SCRIPTED = "lib/Slicer-5.10/qt-scripted-modules"

SLICER_CONFIG = r"""
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_REQUIRED_PYTHON_VERSION "@PYTHON@")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "@SCRIPTED@")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "@SCRIPTED@")
set(BUILD_TESTING ON)

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  foreach(file ${MY_SCRIPTS})
    get_filename_component(ext ${file} EXT)
    if(NOT "${ext}" MATCHES "py")
      set(file "${file}.py")
    endif()
    configure_file(${MY_SOURCE_DIR}/${file} ${MY_DESTINATION_DIR}/${file} COPYONLY)
  endforeach()
  foreach(file ${MY_RESOURCES})
    configure_file(${MY_SOURCE_DIR}/${file} ${MY_DESTINATION_DIR}/${file} COPYONLY)
  endforeach()
  install(DIRECTORY "${MY_DESTINATION_DIR}/" DESTINATION "${MY_INSTALL_DIR}"
    COMPONENT RuntimeLibraries)
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME"
    "SCRIPTS;RESOURCES" ${ARGN})
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}
        AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${value}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    NO_INSTALL_SUBDIR)
endmacro()

macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  set_property(GLOBAL APPEND PROPERTY STANDIN_PYTHON_TESTS ${MY_SCRIPT})
endmacro()
"""

SLICER_CONFIG_VERSION = r"""
set(PACKAGE_VERSION "@VERSION@")
if("${PACKAGE_VERSION}" VERSION_LESS "${PACKAGE_FIND_VERSION}")
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
"""


def standin_slicer(folder, version: str, python: str) -> str:
    os.makedirs(folder, exist_ok=True)
    files = {
        "SlicerConfig.cmake": SLICER_CONFIG.replace("@PYTHON@", python)
        .replace("@SCRIPTED@", SCRIPTED),
        "SlicerConfigVersion.cmake": SLICER_CONFIG_VERSION.replace("@VERSION@", version),
        "UseSlicer.cmake": "", "Empty.cmake": "",
    }
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    return str(folder)


def configure(tmp_path, version: str, python: str) -> subprocess.CompletedProcess:
    slicer_dir = standin_slicer(tmp_path / f"Slicer-{version}", version, python)
    return subprocess.run(["cmake", "-S", ROOT, "-B", str(tmp_path / "build"),
                           f"-DSlicer_DIR={slicer_dir}"], capture_output=True, text=True,
                          timeout=300)


def test_install_tree_is_what_the_lists_say(tmp_path):
    configured = configure(tmp_path, "5.10.0", "3.12.10")
    assert configured.returncode == 0, configured.stdout + configured.stderr
    prefix = tmp_path / "install"
    installed = subprocess.run(["cmake", "--install", str(tmp_path / "build"), "--prefix",
                                str(prefix)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    scripted = prefix / SCRIPTED
    on_disk = {os.path.relpath(os.path.join(base, n), scripted).replace(os.sep, "/")
               for base, _, names in os.walk(scripted) for n in names}
    expected = installed_files()
    assert on_disk == set(expected)
    for path, source in expected.items():
        with open(scripted / path, "rb") as a, open(source, "rb") as b:
            assert a.read() == b.read(), path


@pytest.mark.parametrize("version, python", [("5.8.1", "3.9.10"), ("5.6.2", "3.9.10")])
def test_older_slicer_is_refused(tmp_path, version, python):
    configured = configure(tmp_path, version, python)
    assert configured.returncode != 0
    assert "5.10" in configured.stderr


def test_slicer_shipping_an_old_python_is_refused(tmp_path):
    configured = configure(tmp_path, "5.10.0", "3.9.10")
    assert configured.returncode != 0
    assert "CalibSeg needs Python 3.10 or later" in configured.stderr.replace("\n", " ")
