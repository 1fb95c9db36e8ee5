"""The plain-loop METRICS.md reference and the tie-heavy data that the evaluation tests share, as fixtures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

ALL_METRICS = [
    "precision_at_1",
    "precision_at_5",
    "recall_at_1",
    "recall_at_5",
    "r_precision",
    "map_at_r",
    "map_at_3",
    "map_at_100",
    "map",
    "mrr",
]


def reference(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    metrics: list[str] = ALL_METRICS,
    average: str = "micro",
    without_positives: str = "exclude",
) -> tuple[dict[str, float], int, dict[int, dict[str, float]]]:
    """METRICS.md by plain loops: similarities in float64 after float32 normalisation, ranking by
    (similarity descending, gallery index ascending), exclusions by index and group."""
    in_itself = gallery is None
    if in_itself:
        gallery, gallery_labels, gallery_groups = queries, query_labels, query_groups
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    per_query: dict[str, list[float]] = {m: [] for m in metrics}
    labels_kept: list[int] = []
    n_without = 0
    for i in range(len(q)):
        items = [
            j
            for j in range(len(g))
            if not (in_itself and i == j)
            and not (query_groups is not None and query_groups[i] == gallery_groups[j])
        ]
        similarity = g.astype(np.float64) @ q[i].astype(np.float64)
        ranking = sorted(items, key=lambda j: (-similarity[j], j))
        rel = [1 if gallery_labels[j] == query_labels[i] else 0 for j in ranking]
        r = sum(rel)
        if r == 0:
            n_without += 1
            if without_positives == "exclude":
                continue
        labels_kept.append(int(query_labels[i]))
        for name in metrics:
            per_query[name].append(_loop_metric(name, rel, r))
    per_class: dict[int, dict[str, float]] = {}
    for label in sorted(set(labels_kept)):
        rows = [n for n, lab in enumerate(labels_kept) if lab == label]
        per_class[label] = {m: float(np.mean([per_query[m][n] for n in rows])) for m in metrics}
    if average == "micro":
        values = {m: float(np.mean(per_query[m])) for m in metrics}
    else:
        values = {m: float(np.mean([c[m] for c in per_class.values()])) for m in metrics}
    return values, n_without, per_class


def _loop_metric(name: str, rel: list[int], r: int) -> float:
    if r == 0:
        return 0.0
    precision = [sum(rel[: i + 1]) / (i + 1) for i in range(len(rel))]
    if name == "r_precision":
        return sum(rel[:r]) / r
    if name == "map_at_r":
        return sum(precision[i] * rel[i] for i in range(r)) / r
    if name == "map":
        return sum(p * x for p, x in zip(precision, rel, strict=True)) / r
    if name == "mrr":
        return 1.0 / (rel.index(1) + 1)
    kind, k = name.rsplit("_at_", 1)
    k = int(k)
    if kind == "precision":
        return sum(rel[:k]) / k
    if kind == "recall":
        return 1.0 if sum(rel[:k]) >= 1 else 0.0
    return sum(precision[i] * rel[i] for i in range(min(k, len(rel)))) / min(r, k)


def assert_matches(
    got: dict[str, float], expected: dict[str, float], tol: float = 1e-12, mrr_tol: float = 1e-12
) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=mrr_tol if name == "mrr" else tol), name
        assert 0.0 <= got[name] <= 1.0


def tie_heavy(n: int, seed: int) -> np.ndarray:
    """Unit vectors with entries +-0.5 in 4-d: similarities are exact multiples of 0.5 in float32, so
    almost every neighbour ties and only the index rule orders them."""
    return np.random.default_rng(seed).choice([-0.5, 0.5], size=(n, 4)).astype(np.float32)


@pytest.fixture(name="all_metrics")
def all_metrics_fixture() -> list[str]:
    return list(ALL_METRICS)


@pytest.fixture(name="reference")
def reference_fixture() -> Callable[..., tuple[dict[str, float], int, dict[int, dict[str, float]]]]:
    return reference


@pytest.fixture(name="assert_matches")
def assert_matches_fixture() -> Callable[..., None]:
    return assert_matches


@pytest.fixture(name="tie_heavy")
def tie_heavy_fixture() -> Callable[..., np.ndarray]:
    return tie_heavy
