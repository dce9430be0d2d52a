"""Shared fixtures: sample cases are loaded once per session (read-only copies)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mni_case():
    from CalibSegLib.data import sample_case

    return sample_case("mni-t1", resolution_mm=2.0)


@pytest.fixture(scope="session")
def mni_case_4mm():
    from CalibSegLib.data import sample_case

    return sample_case("mni-t1", resolution_mm=4.0)
