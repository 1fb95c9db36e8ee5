import tracemalloc

import numpy as np
import pytest

from embedlab.evaluation import evaluate_retrieval
from embedlab.retrieval.reranking import KReciprocalParameters, KReciprocalReranker


def on_circle(*degrees: float) -> np.ndarray:
    radians = np.radians(np.array(degrees))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def reference_final_distance(
    queries: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lambda_value: float
) -> np.ndarray:
    """Zhong et al.'s algorithm with plain loops over a dense matrix, d = (1 - cos) / 2 (module docstring)."""
    items = np.concatenate([queries, gallery]).astype(np.float64)
    n, n_queries = items.shape[0], queries.shape[0]
    distance = (1.0 - items @ items.T) / 2.0
    ranking_distance = distance.copy()
    np.fill_diagonal(ranking_distance, -1.0)  # each item first in its own list
    initial_rank = np.argsort(ranking_distance, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    vectors = np.zeros((n, n))
    for i in range(n):
        own = reciprocal(i, k1)
        expanded = own
        for candidate in own:
            half = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(half, own)) > 2.0 / 3.0 * len(half):
                expanded = np.append(expanded, half)
        expanded = np.unique(expanded)
        weight = np.exp(-distance[i, expanded])
        vectors[i, expanded] = weight / weight.sum()
    if k2 != 1:
        vectors = np.stack([vectors[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((n_queries, n))
    for i in range(n_queries):
        overlap = np.minimum(vectors[i], vectors).sum(axis=1)
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)
    final = (1.0 - lambda_value) * jaccard + lambda_value * distance[:n_queries]
    return final[:, n_queries:]


def test_hand_example_a_reciprocal_neighbour_overtakes_a_nearer_one_way_neighbour() -> None:
    # Items (searched in themselves): q at 0 deg, x at 10, z at -11, y1 at 12, y2 at 15.
    # q's two nearest are x and z; z's are q and x, but x's are y1 and y2. So with k1 = 2, R(q) = {q, z}
    # and R(z) = {z, q}, while x, y1, y2 form their own set: only z shares support with q, and
    # 1 - J(q, z) = exp(-d(q, z)) for two-item vectors weighted (1, w) and (w, 1).
    items = on_circle(0, 10, -11, 12, 15)
    labels = np.array([0, 1, 0, 1, 1])
    similarities = items @ items.T
    np.fill_diagonal(similarities, -np.inf)
    before = similarities.copy()
    parameters = KReciprocalParameters(k1=2, k2=1, lambda_value=0.1)
    KReciprocalReranker(items, items, parameters, exclude_index=np.arange(5))(similarities, 0, 5)
    assert list(np.argsort(-before[0])[:4]) == [1, 2, 3, 4]
    assert list(np.argsort(-similarities[0])[:4]) == [2, 1, 3, 4]
    cos_qz = np.cos(np.radians(11))
    expected_z = 0.1 * cos_qz / 2 + 0.9 * np.exp(-(1 - cos_qz) / 2)
    assert similarities[0, 2] == pytest.approx(expected_z, abs=1e-6)
    assert similarities[0, 1] == pytest.approx(0.1 * np.cos(np.radians(10)) / 2, abs=1e-6)
    assert np.isneginf(similarities[0, 0])

    plain = evaluate_retrieval(items, labels, metrics="precision_at_1")
    reranked = evaluate_retrieval(
        items,
        labels,
        items,
        labels,
        exclude_index=np.arange(5),
        metrics="precision_at_1",
        rescore=KReciprocalReranker(items, items, parameters, exclude_index=np.arange(5)),
    )
    # q's top-1 goes from x (other label) to z (same label).
    assert plain.metrics["precision_at_1"] < reranked.metrics["precision_at_1"]


@pytest.mark.parametrize(("k1", "k2", "lambda_value"), [(4, 3, 0.3), (6, 1, 0.0), (3, 2, 1.0)])
def test_matches_the_dense_reference_with_a_separate_gallery(k1: int, k2: int, lambda_value: float) -> None:
    rng = np.random.default_rng(k1)
    queries = rng.normal(size=(12, 5)).astype(np.float32)
    gallery = rng.normal(size=(30, 5)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    final = reference_final_distance(queries, gallery, k1, k2, lambda_value)
    scores = queries @ gallery.T
    KReciprocalReranker(queries, gallery, KReciprocalParameters(k1, k2, lambda_value))(scores, 0, 12)
    # The score is the negated final distance plus a constant: (1 - lambda) + lambda / 2.
    np.testing.assert_allclose(scores, -final + (1 - lambda_value) + lambda_value / 2, atol=1e-5)


def test_blocks_give_the_rows_of_the_whole_and_groups_are_left_out_of_neighbourhoods() -> None:
    rng = np.random.default_rng(3)
    items = rng.normal(size=(40, 4)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    parameters = KReciprocalParameters(k1=5, k2=3, lambda_value=0.3)
    reranker = KReciprocalReranker(
        items, items, parameters, exclude_index=np.arange(40), max_memory_bytes=2000
    )
    whole = items @ items.T
    reranker(whole, 0, 40)
    parts = items @ items.T
    for start in range(0, 40, 7):
        block = parts[start : start + 7]
        reranker(block, start, start + block.shape[0])
    np.testing.assert_allclose(parts, whole, atol=1e-6)

    groups = np.arange(40) // 2
    grouped = KReciprocalReranker(
        items, items, parameters, exclude_index=np.arange(40), query_groups=groups, gallery_groups=groups
    )
    # An item's partner (same group) is absent from its neighbour lists, so their vectors, built from
    # lists that never meet through the pair itself, differ from the ungrouped ones.
    assert not np.allclose(grouped.overlaps(0, 40), reranker.overlaps(0, 40))


def test_memory_stays_far_below_a_dense_matrix_of_the_items() -> None:
    rng = np.random.default_rng(0)
    n = 6000
    items = rng.normal(size=(n, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    dense_bytes = n * n * 4
    tracemalloc.start()
    reranker = KReciprocalReranker(
        items, items, KReciprocalParameters(k1=10, k2=3), exclude_index=np.arange(n), max_memory_bytes=4 << 20
    )
    block = items[:64] @ items.T
    reranker(block, 0, 64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < dense_bytes / 8, f"peak {peak / 2**20:.1f} MiB vs dense {dense_bytes / 2**20:.0f} MiB"


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="k1 and k2"):
        KReciprocalParameters(k1=0)
    with pytest.raises(ValueError, match="lambda"):
        KReciprocalParameters(lambda_value=1.5)
