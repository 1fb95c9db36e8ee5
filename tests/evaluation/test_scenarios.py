"""evaluate_scenarios against the plain-loop reference of METRICS.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embedlab.evaluation import evaluate_scenarios


def test_scenarios_score_query_and_gallery_subsets_separately(
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    x = tie_heavy(60, seed=11)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 60)
    top = rng.random(60) < 0.5
    results = evaluate_scenarios(
        x, labels, metrics=all_metrics, scenarios={"top_vs_top": (top, top), "lateral_vs_top": (~top, top)}
    )
    assert list(results) == ["top_vs_top", "lateral_vs_top"]
    # top vs top is the top subset searched in itself (own row excluded); lateral vs top is a separate
    # gallery.
    expected, _, _ = reference(x[top], labels[top])
    assert_matches(results["top_vs_top"].metrics, expected)
    expected, _, _ = reference(x[~top], labels[~top], x[top], labels[top])
    assert_matches(results["lateral_vs_top"].metrics, expected)
    assert results["lateral_vs_top"].n_queries == int((~top).sum())


def test_scenarios_with_a_separate_gallery_take_index_arrays(
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    q, g = tie_heavy(30, seed=12), tie_heavy(40, seed=13)
    rng = np.random.default_rng(12)
    ql, gl = rng.integers(0, 3, 30), rng.integers(0, 3, 40)
    rows, cols = np.arange(0, 30, 2), np.arange(5, 40)
    result = evaluate_scenarios(q, ql, g, gl, scenarios={"some": (rows, cols)}, metrics=all_metrics)["some"]
    expected, _, _ = reference(q[rows], ql[rows], g[cols], gl[cols])
    assert_matches(result.metrics, expected)
    with pytest.raises(ValueError, match="scenario 'bad'"):
        evaluate_scenarios(q, ql, g, gl, scenarios={"bad": (np.ones(3, dtype=bool), cols)})
