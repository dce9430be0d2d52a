"""The command line behaves the same everywhere: checks before work (without torch), one
overwrite rule naming ``--overwrite``, defaults in every help text, errors on their own line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from CalibSegLib.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "Resources", "Models", "dicece-softace")

#: Runs the CLI in a fresh interpreter and reports whether torch was imported.
WRAPPER = (
    "import sys\n"
    "from CalibSegLib.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_cli(*argv: str, cwd: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines (without the torch line) of a fresh ``calibseg`` run."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("torch imported:"), done.stderr
    assert lines[-1] == "torch imported: False", f"torch was imported: {done.stderr}"
    return done.returncode, lines[:-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from CalibSegLib.io import write_image

    root = tmp_path_factory.mktemp("checks")
    rng = np.random.default_rng(0)
    write_image(str(root / "image.nii.gz"), rng.normal(size=(8, 9, 10)).astype(np.float32),
                np.eye(4))
    write_image(str(root / "labels.nii.gz"), rng.integers(0, 3, (8, 9, 10)).astype(np.uint8),
                np.eye(4))
    (root / "notes.nii.gz").write_text("this is not an image\n")
    (root / "empty.nii.gz").write_bytes(b"")
    existing = root / "existing"
    existing.mkdir()
    for name in ("image_seg.nii.gz", "metrics.json", "report.html", "image_prototype.json",
                 "compare.json", "mni-t1_image.nii.gz"):
        (existing / name).write_text("keep me")
    model_copy = root / "model-copy"
    model_copy.mkdir()
    (model_copy / "model.json").write_text("{}")
    return root


def _img(files, name="image.nii.gz"):
    return str(files / name)


# --------------------------------------------------------------------------- fail fast
BAD_RUNS = {
    "unknown class": (lambda f: ["explain", _img(f), "--model", MODEL, "--class", "gray matter",
                                 "-o", str(f / "x")], "Unknown class 'gray matter'"),
    "text file as image": (lambda f: ["predict", _img(f, "notes.nii.gz"), "--model", MODEL,
                                      "-o", str(f / "x")], "is a text file, not an image"),
    "empty file as image": (lambda f: ["predict", _img(f, "empty.nii.gz"), "--model", MODEL,
                                       "-o", str(f / "x")], "the file is empty"),
    "missing model": (lambda f: ["predict", _img(f), "--model", str(f / "nomodel"), "-o",
                                 str(f / "x")], "does not exist"),
    "model without weights": (lambda f: ["predict", _img(f), "--model", str(f / "model-copy"),
                                         "-o", str(f / "x")], "weights file model.safetensors"),
    "temperature": (lambda f: ["predict", _img(f), "--model", MODEL, "--temperature", "0",
                               "-o", str(f / "x")], "temperature > 0"),
    "ct resolution": (lambda f: ["sample-data", "ct-chest", "--resolution", "1", "-o",
                                 str(f / "x")], "mni-t1 only"),
    "train steps": (lambda f: ["train", "--sample", "mni-t1", "--steps", "2",
                               "--warmup-steps", "1", "--last-layer-steps", "1", "-o",
                               str(f / "x")], "leaves no joint-training step"),
    "train crop": (lambda f: ["train", "--sample", "mni-t1", "--crop", "1:2", "-o",
                              str(f / "x")], "three ranges"),
    "compare classes": (lambda f: ["compare", _img(f), "--model", MODEL, "--model",
                                   os.path.join(ROOT, "tests-no-such-model"), "-o",
                                   str(f / "x")], "does not exist"),
    "calibrate output": (lambda f: ["calibrate", "--model", MODEL, "--cohort", str(f),
                                    "-o", MODEL], "--in-place"),
    "text file as probabilities": (lambda f: ["evaluate", "--probs", _img(f, "notes.nii.gz"),
                                              "--reference", _img(f)], "is a text file"),
    "evaluate bins": (lambda f: ["evaluate", "--probs", _img(f), "--reference", _img(f),
                                 "--bins", "0"], "at least 1 bin"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_options_fail_fast_without_torch(files, case):
    argv, expected = BAD_RUNS[case]
    code, err = run_cli(*argv(files), cwd=str(files))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("calibseg ") and "error:" in err[0], err
    assert expected in err[0]
    assert not (files / "x").exists()


# --------------------------------------------------------------------------- overwrite
OVERWRITE_RUNS = {
    "predict": lambda f, o: ["predict", _img(f), "--model", MODEL, "-o", o],
    "evaluate": lambda f, o: ["evaluate", "--probs", _img(f), "--reference", _img(f, "labels"
                                                                               ".nii.gz"),
                              "-o", o],
    "explain": lambda f, o: ["explain", _img(f), "--model", MODEL, "-o", o],
    "compare": lambda f, o: ["compare", _img(f), "--model", MODEL, "--model", MODEL, "-o", o],
    "report": lambda f, o: ["report", _img(f), "--reference", _img(f, "labels.nii.gz"),
                            "--model", MODEL, "-o", o],
    "demo": lambda f, o: ["demo", "-o", o],
    "sample-data": lambda f, o: ["sample-data", "-o", o],
    "calibrate": lambda f, o: ["calibrate", "--model", MODEL, "--cohort", str(f), "-o", o],
    "train": lambda f, o: ["train", "--sample", "mni-t1", "-o", o],
}


@pytest.mark.parametrize("command", sorted(OVERWRITE_RUNS))
def test_every_writing_command_refuses_to_overwrite_and_names_the_flag(files, command):
    out = files / "existing"
    if command == "train":
        (out / "model.json").write_text("keep me")
    code, err = run_cli(*OVERWRITE_RUNS[command](files, str(out)), cwd=str(files))
    assert code == 2 and len(err) == 1, err
    assert "--overwrite" in err[0] and "overwrite=True" not in err[0]
    for name in os.listdir(out):
        assert (out / name).read_text() == "keep me"


def test_writing_commands_all_take_overwrite():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in OVERWRITE_RUNS:
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert "--overwrite" in options, name


def test_overwrite_replaces_sample_data(tmp_path, capsys):
    out = str(tmp_path / "s")
    assert main(["-q", "sample-data", "--resolution", "8", "-o", out]) == 0
    assert main(["-q", "sample-data", "--resolution", "8", "-o", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "sample-data", "--resolution", "8", "-o", out, "--overwrite"]) == 0


def test_demo_default_folder_is_its_own(monkeypatch, tmp_path):
    """``./run demo`` twice works: the default out/demo is refreshed, other folders are not."""
    from CalibSegLib.commands import demo

    monkeypatch.chdir(tmp_path)
    os.makedirs("out/demo")
    open("out/demo/report.html", "w").close()
    args = argparse.Namespace(output=None, models=None, overwrite=False)
    demo.check(args)
    assert args.output == demo.DEFAULT_OUTPUT
    from CalibSegLib.errors import CalibSegError

    with pytest.raises(CalibSegError, match="--overwrite"):
        demo.check(argparse.Namespace(output="out/demo", models=None, overwrite=False))


# --------------------------------------------------------------------------- help text
def test_help_shows_every_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            assert action.help and "default" in action.help.lower() or (
                "default:" in command.formatter_class(name)._get_help_string(action)), (
                name, action.option_strings)
            if isinstance(action.default, (int, float, str)) and not isinstance(
                    action.default, bool):
                shown = f"{action.default:g}" if isinstance(action.default, float) \
                    else str(action.default)
                assert f"default: {shown}" in text, (name, action.option_strings, shown)


def test_help_examples_name_existing_models():
    from CalibSegLib.cli import _command_modules

    for module in _command_modules():
        for word in getattr(module, "EXAMPLE", "").split():
            if word.startswith("Resources/Models/"):
                assert os.path.isdir(os.path.join(ROOT, word)), (module.NAME, word)


# --------------------------------------------------------------------------- output shape
def test_error_after_a_progress_bar_gets_its_own_line(monkeypatch, capsys):
    from CalibSegLib.errors import CalibSegError
    from CalibSegLib.workflows import sample_data

    def half_done(args):
        sys.stderr.write("\r 50%|#####     | generating")
        raise CalibSegError("something the user can fix")

    monkeypatch.setattr(sample_data, "run", half_done)
    assert main(["sample-data"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\ncalibseg sample-data: error: something the user can fix\n")


def test_label_image_as_input_warns(files, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    (model / "model.safetensors").write_bytes(b"broken")  # stops the run right after the read
    assert main(["predict", _img(files, "labels.nii.gz"), "--model", str(model), "-o",
                 str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "looks like a label map" in err and "warning" in err


# --------------------------------------------------------------------------- evaluate names
def test_evaluate_reads_class_names_from_the_prediction_sidecar(tmp_path, capsys):
    from CalibSegLib.io import write_image

    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 6, 7, 8))
    p = (np.exp(z) / np.exp(z).sum(0)).astype(np.float32)
    write_image(str(tmp_path / "case_probs.nii.gz"), np.moveaxis(p, 0, -1), np.eye(4),
                vector=True)
    write_image(str(tmp_path / "ref.nii.gz"), p.argmax(0).astype(np.uint8), np.eye(4))
    names = ["background", "grey matter", "white matter"]
    (tmp_path / "case_prediction.json").write_text(json.dumps({"class_names": names}))
    argv = ["evaluate", "--probs", str(tmp_path / "case_probs.nii.gz"), "--reference",
            str(tmp_path / "ref.nii.gz"), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["per_class"]) == names and list(result["dice"]) == names
    assert main(argv + ["--classes", "bg,a,b"]) == 0
    assert list(json.loads(capsys.readouterr().out)["dice"]) == ["bg", "a", "b"]
    assert main(["-q"] + argv + ["--classes", "bg,a"]) == 2
    assert "one name per channel" in capsys.readouterr().err
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "Dice grey matter" in text and "class 1" not in text
    assert "raw" in text or "MCE" in text


# --------------------------------------------------------------------------- train budget
def _train_args(*argv):
    parser = build_parser()
    return parser.parse_args(["train", "--sample", "mni-t1", "-o", "x", *argv])


@pytest.mark.parametrize(("argv", "stages"), [
    (["--steps", "2"], (0, 2, 0)),
    (["--steps", "100"], (10, 80, 10)),
    (["--steps", "30", "--warmup-steps", "5", "--last-layer-steps", "0"], (5, 25, 0)),
    (["--steps", "7", "--head", "linear"], (0, 7, 0)),
])
def test_train_steps_is_the_total(argv, stages):
    from CalibSegLib.commands.train import command_line, config_from_args

    args = _train_args(*argv)
    config = config_from_args(args, ["background", "grey matter", "white matter"])
    assert (config.warmup_steps if config.head == "prototype" else 0, config.steps,
            config.last_layer_steps if config.head == "prototype" else 0) == stages
    assert config.total_steps == int(argv[1])
    # the recorded command line reproduces the same budget
    again = _train_args(*command_line(args).split()[4:])
    assert config_from_args(again, config.class_names).total_steps == config.total_steps
