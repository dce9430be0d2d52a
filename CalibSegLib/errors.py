"""The one exception type for errors a user can cause."""


class CalibSegError(Exception):
    """An error caused by input the user can fix; the message says what to do."""


class Cancelled(CalibSegError):
    """A long operation was cancelled by the user; no partial result was kept."""
