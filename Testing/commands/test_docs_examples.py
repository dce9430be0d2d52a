"""Every ``calibseg`` example in README.md and docs/cli.md runs as written.

Examples are read from the files' fenced code blocks (lines starting with ``calibseg`` or
``.venv/bin/calibseg``, backslash continuations joined), so new examples are tested as they
are added. Each file's examples run in order in their own working folder, which holds a copy
of ``Resources/Models`` (examples may write next to a model). Some run with shorter settings,
appended after the documented options (the last value of an option wins); a few need data
that cannot exist offline and are skipped, each with its reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil

import pytest

from CalibSegLib.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCUMENTS = ("README.md", os.path.join("docs", "cli.md"))

#: Examples that cannot run offline or without someone else's data: (text in the line, why).
SKIP = (
    ("import-model ", "imports model files the user brings (a MONAI bundle from the model zoo, "
                      "an nnU-Net results folder trained elsewhere); the import is tested on "
                      "generated models in test_models_import.py and test_nnunet_import.py"),
    ("--site north=", "needs image folders held by real sites"),
    ("calibseg view", "starts a web server that runs until it is stopped; the browser app is "
                      "tested in test_web_*.py"),
)

#: Placeholder words of examples and what they stand for here.
PLACEHOLDERS = {"MODEL": os.path.join("Resources", "Models", "dicece")}

#: Shorter settings per subcommand, appended (the last value of an option wins).
SHORT = {
    "demo": ["--shift-seeds", "1001", "--no-faithfulness"],
    "explain": ["--steps", "2", "--blocks", "2"],
    "report": ["--no-faithfulness"],
    "train": ["--train-seeds", "1", "--val-seeds", "2", "--steps", "2", "--patch", "32",
              "--crop", "30:62,40:72,30:62", "--push-cases", "1"],
}
#: Options whose value is lowered only where an example gives them.
LOWER = {"--sites": "2", "--rounds": "1", "--local-steps": "1"}


def examples(document: str) -> list[str]:
    """The ``calibseg`` command lines of a Markdown file's fenced code blocks, in order."""
    with open(os.path.join(ROOT, document), encoding="utf-8") as fh:
        text = fh.read()
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and (words[0] == "calibseg" or words[0].endswith("/calibseg")):
                found.append(shlex.join(words))
    return found


def _cases():
    for document in DOCUMENTS:
        for n, line in enumerate(examples(document)):
            reason = next((why for key, why in SKIP if key in line), None)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            yield pytest.param(document, line, marks=marks, id=f"{document}:{n}:{line[:60]}")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    folders = {}
    for document in DOCUMENTS:
        folder = tmp_path_factory.mktemp(os.path.basename(document).replace(".", "_"))
        shutil.copytree(os.path.join(ROOT, "Resources", "Models"),
                        folder / "Resources" / "Models")
        folders[document] = folder
    return folders


def test_both_documents_have_examples():
    assert len(examples("README.md")) >= 5
    assert len(examples(os.path.join("docs", "cli.md"))) >= 12
    # every subcommand is shown in the reference
    shown = {shlex.split(line)[1] for line in examples(os.path.join("docs", "cli.md"))}
    from CalibSegLib.cli import _command_modules

    # (view starts the browser app and serves until stopped: documented with the web app)
    assert {m.NAME for m in _command_modules()} - {"view"} <= shown


@pytest.mark.slow
@pytest.mark.parametrize(("document", "line"), list(_cases()))
def test_example_runs(document, line, workdirs, monkeypatch, capsys):
    monkeypatch.chdir(workdirs[document])
    words = shlex.split(line)[1:]
    words = [PLACEHOLDERS.get(w, w) for w in words]
    words = [re.sub(r"^MODEL(?=-)", PLACEHOLDERS["MODEL"], w) for w in words]
    words = [LOWER[words[i - 1]] if i and words[i - 1] in LOWER else w
             for i, w in enumerate(words)]
    if words and words[0] != "--help":
        words = ["-q", *words, *SHORT.get(words[0], [])]
    try:
        code = main(words)
    except SystemExit as exc:  # --help
        code = exc.code
    err = capsys.readouterr().err
    assert code == 0, f"{line}\n{err[-2000:]}"
    for flag in ("-o", "--output", "--dicom-out"):
        if flag in words:
            target = words[words.index(flag) + 1]
            assert os.path.exists(target), f"{line}: {target} was not written"
