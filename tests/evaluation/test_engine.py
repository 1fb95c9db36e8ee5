"""evaluate_retrieval against pytorch-metric-learning and the plain-loop METRICS.md reference (conftest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from embedlab.evaluation import DEFAULT_METRICS, evaluate_retrieval, evaluate_scenarios

# ------------------------------------------------------------------------------------------ data


def tie_free(n: int, dim: int, seed: int, n_gallery: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random embeddings whose cosine similarities are at least 2e-6 apart within every row, so float32
    rounding (a few 1e-7 in any implementation, squared-L2 included) cannot reorder neighbours."""
    rng = np.random.default_rng(seed)
    for _ in range(50):
        q = rng.standard_normal((n, dim)).astype(np.float32)
        g = q if n_gallery is None else rng.standard_normal((n_gallery, dim)).astype(np.float32)
        s = np.sort(
            (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float64)
            @ (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float64).T,
            axis=1,
        )
        gaps = np.diff(s[:, : s.shape[1] - (1 if n_gallery is None else 0)], axis=1)
        if gaps.min() > 2e-6:
            return q, g
    raise AssertionError("no tie-free draw found")


def labels_with_lone(n: int, n_classes: int, seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, n_classes, n)
    labels[:3] = [1000, 1001, 1002]  # each appears once: a lone query in its own gallery
    return labels


# ----------------------------------------------------------------- pytorch-metric-learning oracle


def accuracy_calculator(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    avg_of_avgs: bool = False,
) -> dict[str, float]:
    """AccuracyCalculator with k=None (the whole ranking) on L2-normalised embeddings, so its default
    squared-L2 kNN ranks like cosine. Returns values under embedlab's names."""
    names = {
        "precision_at_1": "precision_at_1",
        "r_precision": "r_precision",
        "map_at_r": "mean_average_precision_at_r",
        "map": "mean_average_precision",
        "mrr": "mean_reciprocal_rank",
    }
    calculator = AccuracyCalculator(
        include=tuple(names.values()), k=None, avg_of_avgs=avg_of_avgs, device=torch.device("cpu")
    )

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    if gallery is None:
        got = calculator.get_accuracy(unit(queries), query_labels)
    else:
        got = calculator.get_accuracy(unit(queries), query_labels, unit(gallery), gallery_labels)
    return {ours: float(got[theirs]) for ours, theirs in names.items()}


ORACLE_METRICS = ["precision_at_1", "r_precision", "map_at_r", "map", "mrr"]
# AccuracyCalculator takes reciprocal ranks of a float32 tensor, so its mrr carries float32 rounding.
ORACLE_MRR_TOLERANCE = 1e-7


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_query_set_in_itself_matches_accuracy_calculator(
    average: str, assert_matches: Callable[..., None]
) -> None:
    x, _ = tie_free(90, 24, seed=0)
    labels = labels_with_lone(90, 6, seed=0)
    expected = accuracy_calculator(x, labels, avg_of_avgs=average == "macro")
    result = evaluate_retrieval(x, labels, metrics=ORACLE_METRICS, average=average)
    assert_matches(result.metrics, expected, mrr_tol=ORACLE_MRR_TOLERANCE)
    assert result.n_queries == 90
    assert result.n_queries_without_positives == 3


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_separate_gallery_matches_accuracy_calculator(
    average: str, assert_matches: Callable[..., None]
) -> None:
    q, g = tie_free(60, 24, seed=1, n_gallery=90)
    rng = np.random.default_rng(1)
    query_labels = rng.integers(0, 8, 60)
    query_labels[:4] = 99  # absent from the gallery: no positives
    gallery_labels = rng.integers(0, 8, 90)
    expected = accuracy_calculator(q, query_labels, g, gallery_labels, avg_of_avgs=average == "macro")
    result = evaluate_retrieval(q, query_labels, g, gallery_labels, metrics=ORACLE_METRICS, average=average)
    assert_matches(result.metrics, expected, mrr_tol=ORACLE_MRR_TOLERANCE)
    assert result.n_queries_without_positives == 4


# --------------------------------------------------------------------------- tie-heavy reference


@pytest.mark.parametrize("max_memory_bytes", [1 << 30, 60 * 12 * 7])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_tie_heavy_query_set_in_itself_matches_the_reference(
    max_memory_bytes: int,
    num_threads: int,
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    x = tie_heavy(60, seed=2)
    labels = np.random.default_rng(2).integers(0, 4, 60)
    for metrics in (all_metrics, [m for m in all_metrics if m != "map"]):
        expected, n_without, _ = reference(x, labels, metrics=metrics)
        result = evaluate_retrieval(
            x, labels, metrics=metrics, max_memory_bytes=max_memory_bytes, num_threads=num_threads
        )
        assert_matches(result.metrics, expected)
        assert result.n_queries_without_positives == n_without


def test_tie_heavy_separate_gallery_with_groups_matches_the_reference(
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    rng = np.random.default_rng(3)
    q, g = tie_heavy(40, seed=3), tie_heavy(70, seed=4)
    query_labels, gallery_labels = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
    query_groups, gallery_groups = rng.integers(0, 6, 40), rng.integers(0, 6, 70)
    for metrics in (all_metrics, ["precision_at_5", "r_precision", "map_at_r", "mrr"]):
        for average in ("micro", "macro"):
            expected, n_without, _ = reference(
                q,
                query_labels,
                g,
                gallery_labels,
                query_groups=query_groups,
                gallery_groups=gallery_groups,
                metrics=metrics,
                average=average,
            )
            result = evaluate_retrieval(
                q,
                query_labels,
                g,
                gallery_labels,
                metrics=metrics,
                query_groups=query_groups,
                gallery_groups=gallery_groups,
                average=average,
            )
            assert_matches(result.metrics, expected)
            assert result.n_queries_without_positives == n_without


def test_groups_in_itself_hide_members_and_the_own_row(
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    x = tie_heavy(50, seed=5)
    rng = np.random.default_rng(5)
    labels, groups = rng.integers(0, 3, 50), rng.integers(0, 10, 50)
    expected, n_without, _ = reference(x, labels, query_groups=groups)
    result = evaluate_retrieval(x, labels, metrics=all_metrics, query_groups=groups)
    assert_matches(result.metrics, expected)
    assert result.n_queries_without_positives == n_without


def test_queries_without_positives_can_score_zero_and_per_class_is_reported(
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    x = tie_heavy(40, seed=6)
    labels = labels_with_lone(40, 3, seed=6)
    expected, n_without, per_class = reference(x, labels, without_positives="zero")
    result = evaluate_retrieval(x, labels, metrics=all_metrics, without_positives="zero", per_class=True)
    assert_matches(result.metrics, expected)
    assert n_without == result.n_queries_without_positives == 3
    assert result.per_class is not None and set(result.per_class) == set(per_class)
    for label, values in per_class.items():
        assert_matches(result.per_class[label], values)


def test_torch_tensors_are_accepted(tie_heavy: Callable[..., np.ndarray]) -> None:
    x = tie_heavy(30, seed=8)
    labels = np.random.default_rng(8).integers(0, 3, 30)
    a = evaluate_retrieval(torch.from_numpy(x), torch.from_numpy(labels))
    b = evaluate_retrieval(x, labels)
    assert a.metrics == b.metrics
    assert list(a.metrics) == list(DEFAULT_METRICS)


def test_approximate_search_reports_its_recall_and_refuses_full_ranking_metrics() -> None:
    x, _ = tie_free(90, 24, seed=0)
    labels = np.random.default_rng(10).integers(0, 4, 90)
    metrics = ["precision_at_1", "recall_at_5", "map_at_r"]
    exact = evaluate_retrieval(x, labels, metrics=metrics)
    for method in ("hnsw", "ivf"):
        approx = evaluate_retrieval(x, labels, metrics=metrics, method=method)
        assert approx.search_recall is not None and approx.search_recall.method == method
        assert 0.0 <= approx.search_recall.recall <= 1.0
        if approx.search_recall.recall == 1.0:
            assert approx.metrics == pytest.approx(exact.metrics, abs=1e-12)
    with pytest.raises(ValueError, match="method='exact'"):
        evaluate_retrieval(x, labels, metrics=["map"], method="hnsw")


# ---------------------------------------------------------------------------------------- errors


def test_bad_gallery_inputs_and_options_are_clear_errors(tie_heavy: Callable[..., np.ndarray]) -> None:
    x, y = tie_heavy(20, seed=16), np.zeros(20, dtype=int)
    with pytest.raises(ValueError, match="gallery_embeddings is empty"):
        evaluate_retrieval(x, y, x[:0], y[:0])
    with pytest.raises(ValueError, match="dimension 4 but gallery_embeddings have dimension 3"):
        evaluate_retrieval(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="without gallery_embeddings"):
        evaluate_retrieval(x, y, gallery_labels=y)
    with pytest.raises(ValueError, match="none of the 20 queries"):
        evaluate_retrieval(x, np.arange(20))
    with pytest.raises(ValueError, match="average"):
        evaluate_retrieval(x, y, average="weighted")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot hold one query row"):
        evaluate_retrieval(x, y, max_memory_bytes=8)


# ------------------------------------------------------------------- transformed galleries, rescoring


def test_exclude_index_with_a_copy_of_the_queries_equals_the_search_in_itself(
    tie_heavy: Callable[..., np.ndarray], all_metrics: list[str]
) -> None:
    x = tie_heavy(50, seed=8)
    rng = np.random.default_rng(8)
    labels, groups = rng.integers(0, 4, 50), rng.integers(0, 12, 50)
    in_itself = evaluate_retrieval(x, labels, metrics=all_metrics, query_groups=groups)
    copy = evaluate_retrieval(
        x,
        labels,
        x.copy(),
        labels,
        metrics=all_metrics,
        query_groups=groups,
        gallery_groups=groups,
        exclude_index=np.arange(50),
    )
    assert copy.metrics == in_itself.metrics
    assert copy.n_queries_without_positives == in_itself.n_queries_without_positives
    # A gallery of the first 30 items: queries 30.. have no own item there.
    own = np.where(np.arange(50) < 30, np.arange(50), -1)
    part = evaluate_retrieval(x, labels, x[:30], labels[:30], metrics=all_metrics, exclude_index=own)
    scenario = evaluate_scenarios(
        x, labels, scenarios={"first 30": (np.arange(50), np.arange(30))}, metrics=all_metrics
    )["first 30"]
    assert part.metrics == scenario.metrics
    with pytest.raises(ValueError, match="exclude_index needs a separate gallery"):
        evaluate_retrieval(x, labels, exclude_index=np.arange(50))
    with pytest.raises(ValueError, match=r"exclude_index values must lie in \[-1, 9\]"):
        evaluate_retrieval(x, labels, x[:10], labels[:10], exclude_index=np.arange(50))


def test_rescore_changes_the_ranking_before_metrics_and_keeps_exclusions(
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
    all_metrics: list[str],
) -> None:
    x = tie_heavy(40, seed=9)
    labels = np.random.default_rng(9).integers(0, 3, 40)
    seen: list[tuple[int, int]] = []

    def reversed_order(similarities: np.ndarray, start: int, stop: int) -> None:
        assert np.isneginf(similarities[np.arange(stop - start), np.arange(start, stop)]).all()
        seen.append((start, stop))
        finite = np.isfinite(similarities)
        similarities[finite] = -similarities[finite]

    # Negating the similarities ranks like negated embeddings against the original gallery.
    result = evaluate_retrieval(
        x, labels, metrics=all_metrics, rescore=reversed_order, max_memory_bytes=40 * 12 * 8
    )
    own = np.arange(40)  # a group per item hides each item from itself in the reference
    expected, _, _ = reference(
        -x, labels, x, labels, query_groups=own, gallery_groups=own, metrics=all_metrics
    )
    assert_matches(result.metrics, expected)
    assert seen[0][0] == 0 and seen[-1][1] == 40 and len(seen) > 1
    with pytest.raises(ValueError, match="re-ranking needs method='exact'"):
        evaluate_retrieval(x, labels, rescore=reversed_order, method="hnsw", metrics="precision_at_1")
