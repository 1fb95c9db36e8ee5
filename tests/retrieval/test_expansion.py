import numpy as np
import pytest

from embedlab.retrieval.expansion import database_augmentation, query_expansion


def unit(*xy: float) -> np.ndarray:
    v = np.array(xy, dtype=np.float64)
    return v / np.linalg.norm(v)


QUERIES = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
# similarities: query 0 -> [0.6, 0.8, -1.0], query 1 -> [0.8, 0.6, 0.0]
GALLERY = np.array([[0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]], dtype=np.float32)


def test_query_expansion_by_hand_k1_alpha1() -> None:
    expanded = query_expansion(QUERIES, GALLERY, k=1, alpha=1.0)
    # query 0's nearest is gallery 1 (0.8): (1, 0) + 0.8 (0.8, 0.6); query 1's is gallery 0 (0.8).
    np.testing.assert_allclose(expanded[0], unit(1.64, 0.48), atol=1e-6)
    np.testing.assert_allclose(expanded[1], unit(0.48, 1.64), atol=1e-6)


def test_query_expansion_by_hand_k2_alpha3() -> None:
    expanded = query_expansion(QUERIES, GALLERY, k=2, alpha=3.0)
    # query 0: gallery 1 (0.8^3 = 0.512) and gallery 0 (0.6^3 = 0.216).
    np.testing.assert_allclose(expanded[0], unit(1 + 0.512 * 0.8 + 0.216 * 0.6, 0.512 * 0.6 + 0.216 * 0.8))
    # query 1: gallery 0 (0.512) and gallery 1 (0.216).
    np.testing.assert_allclose(expanded[1], unit(0.512 * 0.6 + 0.216 * 0.8, 1 + 0.512 * 0.8 + 0.216 * 0.6))


def test_query_expansion_uses_each_querys_own_neighbours_not_the_transposed_lists() -> None:
    """The rows-for-columns slip: ranking the similarity matrix along the query axis, so that query i
    is expanded with the queries nearest to gallery item i. Square and asymmetric, so both readings run
    and give different vectors; only the right one passes."""
    queries = np.stack([unit(1, 0), unit(1, 0.1), unit(0, 1)]).astype(np.float32)
    gallery = np.stack([unit(0, 1), unit(1, 0.05), unit(-1, 0.2)]).astype(np.float32)
    similarities = queries @ gallery.T
    assert [int(np.argmax(row)) for row in similarities] == [1, 1, 0]
    expanded = query_expansion(queries, gallery, k=1, alpha=1.0)
    right = np.stack(
        [unit(*(q + row.max() * gallery[row.argmax()])) for q, row in zip(queries, similarities, strict=True)]
    )
    np.testing.assert_allclose(expanded, right, atol=1e-6)
    # The slip picks, for "query" i, column i's best row and that row's similarity.
    slipped = np.stack(
        [
            unit(*(queries[i] + column.max() * gallery[column.argmax()]))
            for i, column in enumerate(similarities.T)
        ]
    )
    assert np.abs(slipped - right).max() > 0.1


def test_alpha_zero_is_average_query_expansion_and_negatives_count_nothing_for_alpha_positive() -> None:
    expanded = query_expansion(QUERIES[:1], GALLERY, k=3, alpha=0.0)
    np.testing.assert_allclose(expanded[0], unit(*(QUERIES[0] + GALLERY.sum(axis=0))), atol=1e-6)
    expanded = query_expansion(QUERIES[:1], GALLERY, k=3, alpha=1.0)
    # gallery 2 has similarity -1: weight 0, not -1.
    np.testing.assert_allclose(expanded[0], unit(1 + 0.8 * 0.8 + 0.6 * 0.6, 0.8 * 0.6 + 0.6 * 0.8), atol=1e-6)


def test_query_expansion_in_itself_never_uses_the_query_or_its_group() -> None:
    items = np.stack([unit(1, 0), unit(1, 0.1), unit(1, 0.3), unit(0, 1)]).astype(np.float32)
    expanded = query_expansion(items, items, k=1, alpha=1.0, exclude_self=True)
    s01 = float(items[0] @ items[1])
    np.testing.assert_allclose(expanded[0], unit(*(items[0] + s01 * items[1])), atol=1e-6)
    groups = np.array([7, 7, 8, 9])
    expanded = query_expansion(
        items, items, k=1, alpha=1.0, exclude_self=True, query_groups=groups, gallery_groups=groups
    )
    s02 = float(items[0] @ items[2])
    np.testing.assert_allclose(expanded[0], unit(*(items[0] + s02 * items[2])), atol=1e-6)


def test_database_augmentation_by_hand() -> None:
    gallery = np.stack([unit(1, 0), unit(1, 0.2), unit(0, 1)]).astype(np.float32)
    augmented = database_augmentation(gallery, k=1, alpha=2.0)
    s01 = float(gallery[0] @ gallery[1])
    s12 = float(gallery[1] @ gallery[2])
    np.testing.assert_allclose(augmented[0], unit(*(gallery[0] + s01**2 * gallery[1])), atol=1e-6)
    np.testing.assert_allclose(augmented[1], unit(*(gallery[1] + s01**2 * gallery[0])), atol=1e-6)
    # item 2's nearest other item is item 1; every row uses the original gallery, not updated rows.
    np.testing.assert_allclose(augmented[2], unit(*(gallery[2] + s12**2 * gallery[1])), atol=1e-6)


def test_bad_parameters_are_errors() -> None:
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):
            query_expansion(QUERIES, GALLERY, k=k, alpha=3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        database_augmentation(GALLERY, k=1, alpha=-1.0)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        query_expansion(QUERIES[0], GALLERY, k=1, alpha=1.0)
