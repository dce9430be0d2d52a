"""Every command meets bad input with one line, exit code 2 and no output left behind."""

from __future__ import annotations

import numpy as np
import pytest

from CalibSegLib.cli import main
from CalibSegLib.io import write_image
from CalibSegLib.models.testing import tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory, mni_case_4mm):
    root = tmp_path_factory.mktemp("errors")
    image = root / "case.nii.gz"
    write_image(str(image), mni_case_4mm.image, mni_case_4mm.affine)
    labels = root / "labels.nii.gz"
    write_image(str(labels), mni_case_4mm.labels, mni_case_4mm.affine)
    flat = root / "flat.nii.gz"
    write_image(str(flat), np.zeros((1, 12, 12), np.float32), np.eye(4))
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image(12, 12, sitk.sitkFloat32), str(root / "slice2d.nrrd"))
    (root / "a_file").write_text("not a folder")
    model = tiny_model(str(root / "model"))
    return {"root": root, "image": str(image), "labels": str(labels), "model": model,
            "2d": str(root / "slice2d.nrrd"), "missing": str(root / "missing.nii.gz"),
            "blocked": str(root / "a_file" / "out")}


COMMANDS = {
    "predict": lambda f, img, out: ["predict", img, "--model", f["model"], "-o", out],
    "explain": lambda f, img, out: ["explain", img, "--model", f["model"], "-o", out],
    "compare": lambda f, img, out: ["compare", img, "--model", f["model"], "--model",
                                    f["model"], "--reference", f["labels"], "-o", out],
    "report": lambda f, img, out: ["report", img, "--model", f["model"], "--reference",
                                   f["labels"], "-o", out],
    "evaluate": lambda f, img, out: ["evaluate", "--probs", img, "--reference", f["labels"],
                                     "-o", out],
}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("problem", ["missing", "2d"])
def test_bad_input_image(files, capsys, command, problem):
    out = files["root"] / f"out-{command}-{problem}"
    assert main(["-q"] + COMMANDS[command](files, files[problem], str(out))) == 2
    line = _one_line_error(capsys)
    assert ("no such file" in line) if problem == "missing" else ("3D" in line)
    assert not out.exists()


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["sample-data", "demo"])
def test_unwritable_output_is_refused_before_work(files, capsys, command):
    blocked = files["blocked"]
    if command == "sample-data":
        argv = ["sample-data", "-o", blocked]
    elif command == "demo":
        argv = ["demo", "-o", blocked]
    else:
        argv = COMMANDS[command](files, files["image"], blocked)
    assert main(["-q"] + argv) == 2
    assert "is a file, not a folder" in _one_line_error(capsys)
    assert (files["root"] / "a_file").read_text() == "not a folder"


def test_file_system_errors_met_mid_way_are_one_line(files, capsys, monkeypatch):
    import CalibSegLib.workflows.sample_data as sample_data

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "out/x.nii.gz")

    monkeypatch.setattr(sample_data, "json", type("J", (), {"dump": staticmethod(refuse)}))
    assert main(["-q", "sample-data", "--resolution", "4",
                 "-o", str(files["root"] / "s")]) == 2
    assert "Permission denied" in _one_line_error(capsys)


def test_unknown_labels_in_reference(files, capsys, mni_case_4mm, tmp_path):
    bad = tmp_path / "labels9.nii.gz"
    write_image(str(bad), np.where(mni_case_4mm.labels == 2, 9, mni_case_4mm.labels).astype(
        np.uint8), mni_case_4mm.affine)
    out = tmp_path / "cmp"
    assert main(["-q", "compare", files["image"], "--model", files["model"], "--model",
                 files["model"], "--reference", str(bad), "-o", str(out)]) == 2
    assert "label" in _one_line_error(capsys).lower()
    assert not out.exists()


# ---------------------------------------------------------------------------- the error policy
def test_user_errors_met_inside_explain_are_one_line(files, capsys, mni_case_4mm, tmp_path):
    """Errors the explanation library meets in the user's input reach the user as one line."""
    empty_roi = tmp_path / "roi.nii.gz"
    write_image(str(empty_roi), np.zeros_like(mni_case_4mm.labels), mni_case_4mm.affine)
    runs = {
        "no layer 'no.such.layer'": ["--method", "gradcam", "--layer", "no.such.layer"],
        "region of interest is empty": ["--method", "gradcam", "--roi", str(empty_roi)],
    }
    for expected, options in runs.items():
        out = tmp_path / "out"
        argv = ["-q", "explain", files["image"], "--model", files["model"], "-o", str(out)]
        assert main(argv + options) == 2
        assert expected in _one_line_error(capsys)
        assert not out.exists()


def test_programmer_errors_are_not_dressed_as_user_errors(files, capsys, monkeypatch):
    """A TypeError/ValueError is a bug: the command line lets it through with its traceback."""
    import CalibSegLib.workflows.explain as explain_command

    def broken(args):
        raise TypeError("as_segmenter got a str")

    monkeypatch.setattr(explain_command, "run", broken)
    with pytest.raises(TypeError, match="as_segmenter"):
        main(["-q", "explain", files["image"], "--model", files["model"], "-o",
              str(files["root"] / "unused")])
    assert "error:" not in capsys.readouterr().err


def test_json_files_are_read_with_one_rule(files, capsys, tmp_path):
    """Model cards, preprocessing lists and checkpoint states: one line naming the file."""
    import shutil

    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.io import read_json

    broken = tmp_path / "broken-model"
    shutil.copytree(files["model"], broken)
    (broken / "model.json").write_text('{"name": "x",')
    assert main(["-q", "predict", files["image"], "--model", str(broken), "-o",
                 str(tmp_path / "p")]) == 2
    line = _one_line_error(capsys)
    assert "model.json: the model card is not valid JSON" in line and "fix or replace" in line

    listed = tmp_path / "preprocessing.json"
    listed.write_text('{"transform": "NormalizeIntensity"}')
    assert main(["-q", "import-model", str(tmp_path / "none.ts"), "--preprocessing",
                 str(listed), "-o", str(tmp_path / "m")]) == 2
    assert "must hold a list in JSON, not an object" in _one_line_error(capsys)
    assert not (tmp_path / "m").exists()

    assert read_json(str(listed)) == {"transform": "NormalizeIntensity"}
    with pytest.raises(CalibSegError, match="no such checkpoint state"):
        read_json(str(tmp_path / "state.json"), dict, "checkpoint state")
