"""The exceptions for errors a user can cause and fix.

The policy (docs/design.md, "Errors"): :class:`CalibSegError` means the *input*
is wrong (a file, an option, a model that does not fit the image) and its
message is one line that says what to do. A caller's mistake (a wrong argument
type, a call out of order, an impossible state, a broken invariant) raises
Python's own ``TypeError`` / ``ValueError`` / ``KeyError`` / ``RuntimeError`` /
``AssertionError`` instead, so it is never shown as a one-line user error and
keeps its traceback.
"""


class CalibSegError(Exception):
    """An error caused by input the user can fix; the message says what to do.

    The command line and the Slicer module catch this type (and only this type)
    and show its message as one line.
    """


class Cancelled(CalibSegError):
    """A long operation was cancelled by the user; no partial result was kept."""
