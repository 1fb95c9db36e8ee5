"""The depth derived from the metrics, and the ranking kernel loaded on a thread of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embedlab.evaluation import evaluate_retrieval
from embedlab.evaluation.ranks import RankPlan
from embedlab.metric_names import parse_metrics


def test_the_depth_for_r_metrics_is_derived_from_the_largest_class(
    reference: Callable[..., Any], assert_matches: Callable[..., None], tie_heavy: Callable[..., np.ndarray]
) -> None:
    # One class of 150 items: R = 149 for its queries, past any usual fixed k.
    x = tie_heavy(180, seed=7)
    labels = np.r_[np.zeros(150, dtype=int), np.repeat(np.arange(1, 11), 3)]
    metrics = ["r_precision", "map_at_r", "precision_at_1"]
    expected, _, _ = reference(x, labels, metrics=metrics)
    assert_matches(evaluate_retrieval(x, labels, metrics=metrics).metrics, expected)


def test_a_ranking_kernel_that_fails_to_load_fails_the_evaluation(
    monkeypatch: pytest.MonkeyPatch, tie_heavy: Callable[..., np.ndarray]
) -> None:
    # The kernel loads on a thread of its own: its error must reach the caller, not die with the thread.
    from embedlab.evaluation import ranking

    def broken() -> None:
        raise RuntimeError("no compiled kernel")

    monkeypatch.setattr(ranking, "load_kernel", broken)
    x = tie_heavy(20, seed=9)
    with pytest.raises(RuntimeError, match="no compiled kernel"):
        evaluate_retrieval(x, np.arange(20) % 3)


def test_the_plan_takes_the_largest_cutoff_and_r_only_for_r_based_metrics() -> None:
    plan = RankPlan.of(parse_metrics("precision_at_5,map_at_20,mrr"))
    assert (plan.cutoff, plan.needs_r, plan.needs_all, plan.needs_first) == (20, False, False, True)
    assert plan.depth(np.array([3, 50])) == 20
    r_based = RankPlan.of(parse_metrics("precision_at_1,map_at_r"))
    assert (r_based.cutoff, r_based.needs_r, r_based.needs_all) == (1, True, False)
    assert r_based.depth(np.array([3, 50])) == 50 and r_based.depth(np.array([], dtype=np.int64)) == 1
    assert RankPlan.of(parse_metrics(["map"])).needs_all
