"""The pure per-query metrics against plain loops over relevance lists and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from embedlab.evaluation import metrics as M
from embedlab.metric_names import parse_metric


def _loop_metrics(relevance: list[int], n_positives: int, k: int) -> dict[str, float]:
    """METRICS.md formulas, one rank at a time; relevance is the whole ranking."""
    precision_at = [sum(relevance[: i + 1]) / (i + 1) for i in range(len(relevance))]
    r = n_positives
    first = next((i + 1 for i, rel in enumerate(relevance) if rel), None)
    return {
        "precision_at_k": sum(relevance[:k]) / k,
        "recall_at_k": 1.0 if sum(relevance[:k]) >= 1 else 0.0,
        "r_precision": sum(relevance[:r]) / r,
        "map_at_r": sum(precision_at[i] * relevance[i] for i in range(min(r, len(relevance)))) / r,
        "map_at_k": sum(precision_at[i] * relevance[i] for i in range(min(k, len(relevance)))) / min(r, k),
        "map": sum(precision_at[i] * relevance[i] for i in range(len(relevance))) / r,
        "mrr": 1.0 / first if first else 0.0,
    }


def _vectorised(ranks: np.ndarray, n_positives: np.ndarray, k: int) -> dict[str, np.ndarray]:
    return {
        "precision_at_k": M.precision_at_k(ranks, k),
        "recall_at_k": M.recall_at_k(ranks, k),
        "r_precision": M.r_precision(ranks, n_positives),
        "map_at_r": M.map_at_r(ranks, n_positives),
        "map_at_k": M.map_at_k(ranks, n_positives, k),
        "map": M.average_precision(ranks, n_positives),
        "mrr": M.reciprocal_rank(ranks),
    }


@pytest.mark.parametrize("k", [1, 3, 10])
def test_every_metric_matches_a_plain_loop_on_random_rankings(k: int) -> None:
    rng = np.random.default_rng(k)
    relevance = rng.random((200, 30)) < rng.random((200, 1))
    relevance[relevance.sum(axis=1) == 0, rng.integers(0, 30)] = True
    n_positives = relevance.sum(axis=1)
    got = _vectorised(M.positive_ranks_from_relevance(relevance), n_positives, k)
    for q in range(relevance.shape[0]):
        expected = _loop_metrics(relevance[q].astype(int).tolist(), int(n_positives[q]), k)
        for name, value in expected.items():
            assert got[name][q] == pytest.approx(value, abs=1e-12), (name, q)


def test_truncated_rankings_give_the_cutoff_metrics_exactly() -> None:
    # Positives at ranks 2, 5, 40 and 90 of a ranking searched only to depth 10; R = 4.
    ranks = np.array([[2.0, 5.0, np.inf, np.inf]])
    n_positives = np.array([4])
    assert M.precision_at_k(ranks, 5)[0] == pytest.approx(2 / 5)
    assert M.recall_at_k(ranks, 1)[0] == 0.0
    assert M.r_precision(ranks, n_positives)[0] == pytest.approx(1 / 4)
    assert M.map_at_r(ranks, n_positives)[0] == pytest.approx((1 / 2) / 4)
    assert M.map_at_k(ranks, n_positives, 10)[0] == pytest.approx((1 / 2 + 2 / 5) / 4)
    with pytest.raises(ValueError, match="every positive"):
        M.average_precision(ranks, n_positives)


def test_map_at_k_matches_the_google_landmark_formula_by_hand() -> None:
    # tensorflow/models delf google_landmarks_dataset/metrics.py MeanAveragePrecision: for predictions
    # [a, b, c, d] and ground truth {b, d, e}: hits at 2 and 4, ap = (1/2 + 2/4) / min(3, 100) = 1/3.
    ranks = np.array([[2.0, 4.0]])
    n_positives = np.array([3])
    assert M.map_at_k(ranks, n_positives, 100)[0] == pytest.approx(1 / 3)
    # max_predictions = 3 keeps only the hit at 2: (1/2) / min(3, 3).
    assert M.map_at_k(ranks, n_positives, 3)[0] == pytest.approx(1 / 6)
    # The divisor is min(R, k): with 150 relevant images and 100 predictions, all hits, ap = 1.
    full = np.arange(1, 101, dtype=np.float64)[None, :]
    assert M.map_at_k(full, np.array([150]), 100)[0] == pytest.approx(1.0)


def test_map_at_20_matches_the_wheres_whale_do_scoring() -> None:
    # drivendataorg/boem-belugas-runtime scoring: sklearn average precision over the predicted rows,
    # times hits / min(R, 20). Twenty predictions with strictly decreasing scores, hits at 1, 3, 10.
    hits_at = [1, 3, 10]
    y_true = np.zeros(20)
    y_true[np.array(hits_at) - 1] = 1
    scores = np.linspace(1.0, 0.05, 20)
    for n_relevant in (3, 5, 25):
        expected = average_precision_score(y_true, scores) * len(hits_at) / min(n_relevant, 20)
        got = M.map_at_k(np.array([hits_at], dtype=np.float64), np.array([n_relevant]), 20)[0]
        assert got == pytest.approx(expected, abs=1e-12)
    # By hand for R = 25: (1/1 + 2/3 + 3/10) / 20.
    assert M.map_at_k(np.array([hits_at], dtype=np.float64), np.array([25]), 20)[0] == pytest.approx(
        (1 + 2 / 3 + 3 / 10) / 20
    )


def test_queries_without_positives_score_zero() -> None:
    ranks = np.full((1, 1), np.inf)
    n_positives = np.array([0])
    for values in _vectorised(ranks, n_positives, 5).values():
        assert values[0] == 0.0


def test_relevance_conversion_pads_with_inf_and_refuses_other_shapes() -> None:
    ranks = M.positive_ranks_from_relevance(np.array([[False, True, True], [False, False, False]]))
    np.testing.assert_array_equal(ranks, [[2.0, 3.0], [np.inf, np.inf]])
    with pytest.raises(ValueError, match="2-D"):
        M.positive_ranks_from_relevance(np.array([True, False]))


def test_metric_values_computes_each_kind_with_its_formula() -> None:
    ranks = np.array([[1.0, 4.0, np.inf], [2.0, 3.0, 5.0], [np.inf, np.inf, np.inf]])
    n_positives = np.array([2, 3, 0])
    formulas = {
        "precision_at_3": M.precision_at_k(ranks, 3),
        "recall_at_1": M.recall_at_k(ranks, 1),
        "map_at_2": M.map_at_k(ranks, n_positives, 2),
        "r_precision": M.r_precision(ranks, n_positives),
        "map_at_r": M.map_at_r(ranks, n_positives),
        "map": M.average_precision(ranks, n_positives),
        "mrr": M.reciprocal_rank(ranks),
    }
    for name, expected in formulas.items():
        np.testing.assert_array_equal(M.metric_values(parse_metric(name), ranks, n_positives), expected, name)
