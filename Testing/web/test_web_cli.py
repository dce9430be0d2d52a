"""``calibseg view`` command line: registration, safety defaults, the arguments it passes on.

The command lives in CalibSegLib (no Slicer import): it only finds and starts the app."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from CalibSegLib.cli import build_parser, main  # noqa: E402
from CalibSegLib.commands import view  # noqa: E402
from CalibSegLib.errors import CalibSegError  # noqa: E402
from CalibSegWeb.__main__ import check_host  # noqa: E402


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["view", *argv])


def test_view_is_a_command_with_safe_defaults():
    assert "view" in build_parser().format_help()
    args = parse()
    assert args.host == "127.0.0.1" and args.port == 0 and not args.allow_remote


def test_child_command_passes_absolute_paths_and_options(tmp_path):
    image = tmp_path / "scan.nii.gz"
    args = parse(str(image), "--model", str(tmp_path / "models"), "--model", "~/more",
                 "--port", "8123", "--max-upload-mb", "10")
    command = view.child_command(args)
    assert command[:3] == [sys.executable, "-m", "CalibSegWeb"]
    assert command[3] == str(image)
    models = [command[i + 1] for i, word in enumerate(command) if word == "--model"]
    assert models == [str(tmp_path / "models"), os.path.expanduser("~/more")]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "8123"
    assert "--allow-remote" not in command


def test_missing_image_is_one_line_error(capsys, tmp_path):
    assert main(["view", str(tmp_path / "nope.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_app_is_found_beside_the_library():
    assert os.path.samefile(view.app_root(), ROOT)


def test_only_loopback_without_allow_remote(capsys):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_host(host, allow_remote=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(CalibSegError, match="--allow-remote"):
        check_host("0.0.0.0", allow_remote=False)
    with pytest.raises(CalibSegError, match="--allow-remote"):
        check_host("192.168.1.10", allow_remote=False)
    check_host("0.0.0.0", allow_remote=True)
    assert "WARNING" in capsys.readouterr().err


def test_form_reaches_the_app_and_its_session(monkeypatch):
    assert parse().form == "auto"
    with pytest.raises(SystemExit):
        parse("--form", "small")
    command = view.child_command(parse("--form", "compact"))
    assert command[command.index("--form") + 1] == "compact"
    # the app parses what the command passes (one definition of the options)
    from CalibSegWeb.__main__ import build_parser as app_parser

    assert app_parser().parse_args(command[3:]).form == "compact"
    # and hands it to the browser session: run the app's main without serving
    pytest.importorskip("slicer")
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    import CalibSegWeb.__main__ as app_main
    from CalibSegWeb import app as app_module

    made = []

    class Unserved(app_module.CalibSegWebApp):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            monkeypatch.setattr(self.server, "start", lambda **_: None)
            made.append(self)

    monkeypatch.setattr(app_module, "CalibSegWebApp", Unserved)
    # what main sets for the process, restored after the test
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(app_module.slicer, "mrmlScene", getattr(app_module.slicer, "mrmlScene",
                                                                None), raising=False)
    monkeypatch.setenv("VTK_DEFAULT_OPENGL_WINDOW",
                       os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
    assert app_main.main(command[3:]) == 0
    assert [app.session.form for app in made] == ["compact"]
