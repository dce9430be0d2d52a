"""The ``calibseg`` command line.

Each subcommand has an interface module under :mod:`CalibSegLib.commands` that
defines ``NAME``, ``HELP``, ``EXAMPLE``, ``add_arguments(parser)`` and, optionally,
``check(args)``; the work is ``run(args) -> int`` of the workflow module of the same
name under :mod:`CalibSegLib.workflows`. Interface modules are discovered, so adding
a command never edits this file. Building the parser and running the checks imports
neither torch nor a model, so a wrong option fails at once; only then is the
workflow imported, by name (:func:`workflow_of`, the library's one dynamic import,
like a console-script entry point). A command whose work is light (``view`` starts a
child process) defines ``run(args)`` in its interface module instead.

User errors (:class:`CalibSegError`) end with one line and exit code 2; a traceback
is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from types import ModuleType

import CalibSegLib.commands
import CalibSegLib.workflows
from CalibSegLib import __version__
from CalibSegLib.errors import CalibSegError
from CalibSegLib.files import check_output_location

#: Order in which commands are listed in ``calibseg --help``; unknown ones follow.
_ORDER = [
    "demo", "predict", "evaluate", "calibrate", "explain", "compare", "report",
    "train", "import-model", "sample-data", "federated",
]


def _command_modules() -> list[ModuleType]:
    """The interface modules of every subcommand, in help order."""
    pkg = CalibSegLib.commands
    modules = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "add_arguments"):
            modules.append(module)

    def rank(m: ModuleType) -> tuple[int, str]:
        return (_ORDER.index(m.NAME) if m.NAME in _ORDER else len(_ORDER), m.NAME)

    return sorted(modules, key=rank)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example's layout and appends ``(default: …)`` to every option that has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS
                or "default:" in text.lower() or not action.option_strings):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(v) for v in default) if action.nargs else \
                ",".join(str(v) for v in default)
        else:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown})" if text else f"default: {shown}"


class _LineTracker:
    """A stderr wrapper that knows whether the last thing written ended its line."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.mid_line = False

    def write(self, text: str) -> int:
        if text:
            self.mid_line = not text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(
        prog="calibseg",
        description="Calibrated, explainable segmentation: predict, evaluate calibration, "
        "recalibrate, explain and report.",
    )
    parser.add_argument("--version", action="version", version=f"calibseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        example = getattr(module, "EXAMPLE", "")
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            epilog=f"example:\n  {example}" if example else None,
            formatter_class=HelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress output")
        module.add_arguments(p)
        for action in p._actions:  # an option without help still shows its default
            if action.option_strings and action.help is None and action.default not in (
                    None, False, argparse.SUPPRESS):
                action.help = "default: %(default)s"
        p.set_defaults(_command=module)
    return parser


def workflow_of(command: ModuleType) -> Callable[[argparse.Namespace], int]:
    """``run`` of the workflow module ``CalibSegLib.workflows.<interface module name>``.

    Imported by name only here, after the checks, so that the interface modules stay
    free of torch (a command with a light ``run`` in its interface keeps that one).
    """
    if hasattr(command, "run"):
        return command.run
    name = command.__name__.rsplit(".", 1)[1]
    return importlib.import_module(f"{CalibSegLib.workflows.__name__}.{name}").run


def run_command(command: ModuleType, args: argparse.Namespace) -> int:
    """Check the options and outputs of ``args``, then run the command's workflow."""
    for name in ("output", "dicom_out"):
        if isinstance(getattr(args, name, None), str):
            check_output_location(getattr(args, name))
    check = getattr(command, "check", None)
    if check is not None and not hasattr(command, "run"):
        check(args)
    return int(workflow_of(command)(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``calibseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    stderr = sys.stderr
    tracker = _LineTracker(stderr)
    sys.stderr = tracker

    def fail(message: str) -> None:
        if tracker.mid_line:  # after a progress bar: the error gets its own line
            stderr.write("\n")
        print(f"calibseg {args.command}: {message}", file=stderr)

    try:
        return run_command(args._command, args)
    except CalibSegError as exc:
        if args.debug:
            raise
        fail(f"error: {exc}")
        return 2
    except OSError as exc:  # a file system refusal met mid-way (disk full, permissions)
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"error: {where}{exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    finally:
        sys.stderr = stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
