"""Signed prototype evidence: for and against a class, ranked consistently."""

from __future__ import annotations

import numpy as np
import pytest

from CalibSegLib.explain.prototype import rank_prototypes
from CalibSegLib.explain.table import prototype_evidence


def test_evidence_is_signed_and_ranked_within_each_side():
    # 5 prototypes, class 1's weights: two push for it, two against, one is silent
    similarity = np.array([1.0, 2.0, 0.5, 3.0, 0.0]).reshape(5, 1, 1, 1) * np.ones((5, 2, 2, 2))
    weight = np.array([[0, 0, 0, 0, 0], [0.4, 0.3, -1.0, -0.05, 2.0]])
    ranking = rank_prototypes(similarity, weight, 1, np.ones((2, 2, 2), bool))
    contributions = {r["index"]: r["contribution"] for r in ranking}
    np.testing.assert_allclose([contributions[j] for j in range(5)],
                               8 * np.array([0.4, 0.6, -0.5, -0.15, 0.0]))
    rows = prototype_evidence(ranking, top=None)
    assert [(r["side"], r["rank"], r["index"]) for r in rows] == [
        ("for", 1, 1), ("for", 2, 0), ("against", 1, 2), ("against", 2, 3)]
    total = 8 * (0.4 + 0.6 + 0.5 + 0.15)
    assert [r["evidence"] for r in rows] == pytest.approx(
        [8 * 0.6 / total, 8 * 0.4 / total, -8 * 0.5 / total, -8 * 0.15 / total])
    assert sum(abs(r["evidence"]) for r in rows) == pytest.approx(1.0)


def test_top_keeps_the_strongest_on_each_side():
    entries = [{"index": j, "contribution": c, "mean_similarity": 0.5, "source": {}}
               for j, c in enumerate([0.1, -0.3, 0.05, -0.2, 0.4, -0.01])]
    rows = prototype_evidence(entries, top=2)
    assert [(r["side"], r["index"]) for r in rows] == [
        ("for", 4), ("for", 0), ("against", 1), ("against", 3)]
    # shares are of every prototype's evidence, not only of the rows shown
    assert rows[0]["evidence"] == pytest.approx(0.4 / 1.06)
    assert prototype_evidence([], top=3) == []
