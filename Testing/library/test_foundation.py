"""Package-level promises: import hygiene, the command line, lint, CI wiring."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_does_not_pull_slicer_or_qt():
    code = (
        "import sys, CalibSegLib, CalibSegLib.cli, CalibSegLib.data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('slicer', 'qt', 'ctk', 'vtk')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_library_sources_never_import_slicer():
    for folder, _, files in os.walk(os.path.join(ROOT, "CalibSegLib")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                for line in text.splitlines():
                    words = line.strip().split()
                    if words[:1] in (["import"], ["from"]) and len(words) > 1:
                        top = words[1].split(".")[0].rstrip(",")
                        assert top not in ("slicer", "qt", "ctk", "vtk"), f"{name}: {line}"


def test_cli_help_lists_commands():
    from CalibSegLib.cli import build_parser

    text = build_parser().format_help()
    for command in ("demo", "sample-data"):
        assert command in text


def test_cli_user_error_is_one_line_and_nonzero(capsys):
    from CalibSegLib.cli import main

    code = main(["sample-data", "no-such-case", "-o", "unused"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "choose one of" in err
    assert "Traceback" not in err


def test_sample_data_command_writes_readable_files(tmp_path):
    import numpy as np

    from CalibSegLib.cli import main
    from CalibSegLib.data import sample_case
    from CalibSegLib.io import read_image

    assert main(["-q", "sample-data", "mni-t1", "--resolution", "4", "-o", str(tmp_path)]) == 0
    image, affine = read_image(str(tmp_path / "mni-t1_image.nii.gz"))
    labels, _ = read_image(str(tmp_path / "mni-t1_labels.nii.gz"))
    case = sample_case("mni-t1", resolution_mm=4)
    np.testing.assert_allclose(image, case.image)
    np.testing.assert_array_equal(labels, case.labels)
    np.testing.assert_allclose(affine, case.affine, atol=1e-6)
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".calibseg-")]
    assert leftovers == []


def test_ci_calls_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "./run test" in readme.split("\n## ")[0]
    assert "./run demo" in readme.split("\n## ")[0]
    assert "./run test" in ci


@pytest.mark.skipif(shutil.which("ruff") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "ruff")), reason="ruff not installed")
def test_ruff_clean():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
