"""Moved to :mod:`CalibSegLib.workflows.demo` and :mod:`CalibSegLib.workflows.report`.

The rendering of the page is :mod:`CalibSegLib.report.comparison`. This module keeps
the old import path working for a short transition and is then removed.
"""

from CalibSegLib.workflows.demo import DEMO_MODELS, models_folder, run_demo  # noqa: F401
from CalibSegLib.workflows.report import run_report  # noqa: F401
