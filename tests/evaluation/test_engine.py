"""evaluate_retrieval and friends against pytorch-metric-learning and a plain-loop METRICS.md reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from embedlab.evaluation import (
    DEFAULT_METRICS,
    evaluate_embedding_files,
    evaluate_retrieval,
    evaluate_scenarios,
    format_metrics_table,
    parse_metrics,
)

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

# ------------------------------------------------------------------------------------ the reference


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


def tie_heavy(n: int, seed: int) -> np.ndarray:
    """Unit vectors with entries +-0.5 in 4-d: similarities are exact multiples of 0.5 in float32, so
    almost every neighbour ties and only the index rule orders them."""
    return np.random.default_rng(seed).choice([-0.5, 0.5], size=(n, 4)).astype(np.float32)


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
def test_query_set_in_itself_matches_accuracy_calculator(average: str) -> None:
    x, _ = tie_free(90, 24, seed=0)
    labels = labels_with_lone(90, 6, seed=0)
    expected = accuracy_calculator(x, labels, avg_of_avgs=average == "macro")
    result = evaluate_retrieval(x, labels, metrics=ORACLE_METRICS, average=average)
    assert_matches(result.metrics, expected, mrr_tol=ORACLE_MRR_TOLERANCE)
    assert result.n_queries == 90
    assert result.n_queries_without_positives == 3


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_separate_gallery_matches_accuracy_calculator(average: str) -> None:
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
def test_tie_heavy_query_set_in_itself_matches_the_reference(max_memory_bytes: int, num_threads: int) -> None:
    x = tie_heavy(60, seed=2)
    labels = np.random.default_rng(2).integers(0, 4, 60)
    for metrics in (ALL_METRICS, [m for m in ALL_METRICS if m != "map"]):
        expected, n_without, _ = reference(x, labels, metrics=metrics)
        result = evaluate_retrieval(
            x, labels, metrics=metrics, max_memory_bytes=max_memory_bytes, num_threads=num_threads
        )
        assert_matches(result.metrics, expected)
        assert result.n_queries_without_positives == n_without


def test_tie_heavy_separate_gallery_with_groups_matches_the_reference() -> None:
    rng = np.random.default_rng(3)
    q, g = tie_heavy(40, seed=3), tie_heavy(70, seed=4)
    query_labels, gallery_labels = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
    query_groups, gallery_groups = rng.integers(0, 6, 40), rng.integers(0, 6, 70)
    for metrics in (ALL_METRICS, ["precision_at_5", "r_precision", "map_at_r", "mrr"]):
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


def test_groups_in_itself_hide_members_and_the_own_row() -> None:
    x = tie_heavy(50, seed=5)
    rng = np.random.default_rng(5)
    labels, groups = rng.integers(0, 3, 50), rng.integers(0, 10, 50)
    expected, n_without, _ = reference(x, labels, query_groups=groups)
    result = evaluate_retrieval(x, labels, metrics=ALL_METRICS, query_groups=groups)
    assert_matches(result.metrics, expected)
    assert result.n_queries_without_positives == n_without


def test_queries_without_positives_can_score_zero_and_per_class_is_reported() -> None:
    x = tie_heavy(40, seed=6)
    labels = labels_with_lone(40, 3, seed=6)
    expected, n_without, per_class = reference(x, labels, without_positives="zero")
    result = evaluate_retrieval(x, labels, metrics=ALL_METRICS, without_positives="zero", per_class=True)
    assert_matches(result.metrics, expected)
    assert n_without == result.n_queries_without_positives == 3
    assert result.per_class is not None and set(result.per_class) == set(per_class)
    for label, values in per_class.items():
        assert_matches(result.per_class[label], values)


def test_the_depth_for_r_metrics_is_derived_from_the_largest_class() -> None:
    # One class of 150 items: R = 149 for its queries, past any usual fixed k.
    x = tie_heavy(180, seed=7)
    labels = np.r_[np.zeros(150, dtype=int), np.repeat(np.arange(1, 11), 3)]
    metrics = ["r_precision", "map_at_r", "precision_at_1"]
    expected, _, _ = reference(x, labels, metrics=metrics)
    assert_matches(evaluate_retrieval(x, labels, metrics=metrics).metrics, expected)


def test_a_ranking_kernel_that_fails_to_load_fails_the_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel loads on a thread of its own: its error must reach the caller, not die with the thread.
    from embedlab.evaluation import ranking

    def broken() -> None:
        raise RuntimeError("no compiled kernel")

    monkeypatch.setattr(ranking, "load_kernel", broken)
    x = tie_heavy(20, seed=9)
    with pytest.raises(RuntimeError, match="no compiled kernel"):
        evaluate_retrieval(x, np.arange(20) % 3)


def test_torch_tensors_are_accepted() -> None:
    x = tie_heavy(30, seed=8)
    labels = np.random.default_rng(8).integers(0, 3, 30)
    a = evaluate_retrieval(torch.from_numpy(x), torch.from_numpy(labels))
    b = evaluate_retrieval(x, labels)
    assert a.metrics == b.metrics
    assert list(a.metrics) == list(DEFAULT_METRICS)


def test_result_to_dict_is_json_ready_with_exactly_the_requested_keys() -> None:
    x = tie_heavy(30, seed=9)
    labels = np.random.default_rng(9).integers(0, 3, 30)
    result = evaluate_retrieval(x, labels, metrics="precision_at_5,map_at_100")
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == ["precision_at_5", "map_at_100", "n_queries", "n_queries_without_positives"]


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


# ------------------------------------------------------------------------------------- scenarios


def test_scenarios_score_query_and_gallery_subsets_separately() -> None:
    x = tie_heavy(60, seed=11)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 60)
    top = rng.random(60) < 0.5
    results = evaluate_scenarios(
        x, labels, metrics=ALL_METRICS, scenarios={"top_vs_top": (top, top), "lateral_vs_top": (~top, top)}
    )
    assert list(results) == ["top_vs_top", "lateral_vs_top"]
    # top vs top is the top subset searched in itself (own row excluded); lateral vs top is a separate
    # gallery.
    expected, _, _ = reference(x[top], labels[top])
    assert_matches(results["top_vs_top"].metrics, expected)
    expected, _, _ = reference(x[~top], labels[~top], x[top], labels[top])
    assert_matches(results["lateral_vs_top"].metrics, expected)
    assert results["lateral_vs_top"].n_queries == int((~top).sum())


def test_scenarios_with_a_separate_gallery_take_index_arrays() -> None:
    q, g = tie_heavy(30, seed=12), tie_heavy(40, seed=13)
    rng = np.random.default_rng(12)
    ql, gl = rng.integers(0, 3, 30), rng.integers(0, 3, 40)
    rows, cols = np.arange(0, 30, 2), np.arange(5, 40)
    result = evaluate_scenarios(q, ql, g, gl, scenarios={"some": (rows, cols)}, metrics=ALL_METRICS)["some"]
    expected, _, _ = reference(q[rows], ql[rows], g[cols], gl[cols])
    assert_matches(result.metrics, expected)
    with pytest.raises(ValueError, match="scenario 'bad'"):
        evaluate_scenarios(q, ql, g, gl, scenarios={"bad": (np.ones(3, dtype=bool), cols)})


# ---------------------------------------------------------------------------------------- errors


def test_a_label_column_is_refused_not_broadcast() -> None:
    # Regression: an (N, 1) column broadcast against (N,) labels turns mAP into values in the thousands.
    x = tie_heavy(20, seed=14)
    with pytest.raises(ValueError, match=r"query_labels must be a 1-D array.*\(20, 1\)"):
        evaluate_retrieval(x, np.zeros((20, 1), dtype=int))
    with pytest.raises(ValueError, match=r"gallery_labels must be a 1-D.*\(20, 1\)"):
        evaluate_retrieval(x, np.zeros(20, dtype=int), x, np.zeros((20, 1), dtype=int))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y: (x, y[:-1]), "has length 19"),
        (lambda x, y: (np.where(np.arange(4) == 2, np.nan, x), y), "NaN or infinite"),
        (lambda x, y: (np.where(np.arange(4) == 1, np.inf, x), y), "NaN or infinite"),
        (lambda x, y: (x, y.astype(np.float32)), "must hold integers"),
        (lambda x, y: (x[0], y), "2-D"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
    ],
)
def test_bad_query_inputs_are_clear_errors(change: object, message: str) -> None:
    x, y = tie_heavy(20, seed=15), np.zeros(20, dtype=int)
    bad_x, bad_y = change(x, y)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(bad_x, bad_y)


def test_bad_gallery_inputs_and_options_are_clear_errors() -> None:
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


def test_unknown_metric_names_list_the_valid_forms() -> None:
    with pytest.raises(ValueError, match=r"precision_at_<k>.*Did you mean 'map_at_100'"):
        parse_metrics(["map@100"])
    for bad in ("precision_at_0", "recall_at_05", "ndcg", "map_at_", "map,map"):
        with pytest.raises(ValueError):
            parse_metrics(bad)
    assert [s.k for s in parse_metrics("precision_at_5,map_at_r,map_at_20")] == [5, None, 20]


# ---------------------------------------------------------------------------------- files, table


def test_embedding_files_are_loaded_and_checked(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    q, g = tie_heavy(20, seed=17), tie_heavy(30, seed=18)
    rng = np.random.default_rng(17)
    ql, gl, groups = rng.integers(0, 3, 20), rng.integers(0, 3, 30), rng.integers(0, 5, 50)
    for name, array in {"q": q, "ql": ql, "g": g, "gl": gl, "groups": groups, "col": ql[:, None]}.items():
        np.save(folder / f"{name}.npy", array)
    result = evaluate_embedding_files(
        folder / "q.npy",
        folder / "ql.npy",
        folder / "g.npy",
        folder / "gl.npy",
        folder / "groups.npy",
        ["map_at_r", "mrr"],
    )
    expected, _, _ = reference(
        q, ql, g, gl, query_groups=groups[:20], gallery_groups=groups[20:], metrics=["map_at_r", "mrr"]
    )
    assert_matches(result.metrics, expected)
    assert list(evaluate_embedding_files(folder / "q.npy", folder / "ql.npy").metrics) == list(
        DEFAULT_METRICS
    )
    with pytest.raises(ValueError, match=r"col.npy' holds shape \(20, 1\); expected \(20,\)"):
        evaluate_embedding_files(folder / "q.npy", folder / "col.npy")
    with pytest.raises(ValueError, match=r"groups.npy' holds shape \(50,\); expected \(20,\)"):
        evaluate_embedding_files(folder / "q.npy", folder / "ql.npy", groups_path=folder / "groups.npy")
    with pytest.raises(ValueError, match="query embeddings file .*ql.npy' holds shape"):
        evaluate_embedding_files(folder / "ql.npy", folder / "ql.npy")


def test_metrics_table_lists_every_metric_and_the_counts() -> None:
    from rich.console import Console

    x = tie_heavy(30, seed=19)
    result = evaluate_retrieval(x, np.random.default_rng(19).integers(0, 3, 30))
    console = Console(record=True, width=100)
    console.print(format_metrics_table(result))
    text = console.export_text()
    for name in [*DEFAULT_METRICS, "n_queries", "n_queries_without_positives"]:
        assert name in text


# ------------------------------------------------------------------- transformed galleries, rescoring


def test_exclude_index_with_a_copy_of_the_queries_equals_the_search_in_itself() -> None:
    x = tie_heavy(50, seed=8)
    rng = np.random.default_rng(8)
    labels, groups = rng.integers(0, 4, 50), rng.integers(0, 12, 50)
    in_itself = evaluate_retrieval(x, labels, metrics=ALL_METRICS, query_groups=groups)
    copy = evaluate_retrieval(
        x,
        labels,
        x.copy(),
        labels,
        metrics=ALL_METRICS,
        query_groups=groups,
        gallery_groups=groups,
        exclude_index=np.arange(50),
    )
    assert copy.metrics == in_itself.metrics
    assert copy.n_queries_without_positives == in_itself.n_queries_without_positives
    # A gallery of the first 30 items: queries 30.. have no own item there.
    own = np.where(np.arange(50) < 30, np.arange(50), -1)
    part = evaluate_retrieval(x, labels, x[:30], labels[:30], metrics=ALL_METRICS, exclude_index=own)
    scenario = evaluate_scenarios(
        x, labels, scenarios={"first 30": (np.arange(50), np.arange(30))}, metrics=ALL_METRICS
    )["first 30"]
    assert part.metrics == scenario.metrics
    with pytest.raises(ValueError, match="exclude_index needs a separate gallery"):
        evaluate_retrieval(x, labels, exclude_index=np.arange(50))
    with pytest.raises(ValueError, match=r"exclude_index values must lie in \[-1, 9\]"):
        evaluate_retrieval(x, labels, x[:10], labels[:10], exclude_index=np.arange(50))


def test_rescore_changes_the_ranking_before_metrics_and_keeps_exclusions() -> None:
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
        x, labels, metrics=ALL_METRICS, rescore=reversed_order, max_memory_bytes=40 * 12 * 8
    )
    own = np.arange(40)  # a group per item hides each item from itself in the reference
    expected, _, _ = reference(
        -x, labels, x, labels, query_groups=own, gallery_groups=own, metrics=ALL_METRICS
    )
    assert_matches(result.metrics, expected)
    assert seen[0][0] == 0 and seen[-1][1] == 40 and len(seen) > 1
    with pytest.raises(ValueError, match="re-ranking needs method='exact'"):
        evaluate_retrieval(x, labels, rescore=reversed_order, method="hnsw", metrics="precision_at_1")
