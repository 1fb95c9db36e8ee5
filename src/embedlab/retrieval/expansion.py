"""alpha-query expansion and database-side augmentation (Radenovic et al., "Fine-tuning CNN Image
Retrieval with No Human Annotation", TPAMI 2018).

Both replace a vector x by x' = normalise(x + sum over x's top-k neighbours n of max(s(x, n), 0)^alpha * n),
s being cosine similarity; x itself enters with weight 1 (its similarity to itself) and alpha = 0 is plain
average query expansion. Query expansion does this for each query with its neighbours in the gallery;
database-side augmentation for each gallery item with its neighbours among the other gallery items, so
that queries then search the augmented gallery.

Neighbours are taken per row of the vectors being expanded (row i is expanded with row i's neighbours,
never with the items whose neighbour it is), and an item never uses what is hidden from it: its own row
when the gallery is the query set, and the items of its ignore group.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedlab.retrieval.arrays import as_embedding_matrix, l2_normalize
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES
from embedlab.retrieval.exclusions import make_exclusions
from embedlab.retrieval.search import iter_neighbour_blocks


def weighted_neighbour_sum(
    vectors: np.ndarray,
    database: np.ndarray,
    similarities: np.ndarray,
    indices: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """normalise(x + sum_j max(s_j, 0)^alpha * database[indices_j]) for each row x of `vectors`.

    vectors (n, D) unit rows; similarities and indices (n, k) their ranked neighbours in `database`
    (index -1 where a row has fewer than k).
    """
    present = indices >= 0
    weights = np.where(present, np.power(np.maximum(similarities, 0.0), alpha), 0.0).astype(np.float32)
    neighbours = database[np.where(present, indices, 0)]
    return l2_normalize(vectors + np.einsum("nk,nkd->nd", weights, neighbours))


def check_expansion(k: int, alpha: float) -> None:
    """The one rule for k and alpha of query expansion and database-side augmentation (the post-processing
    steps `qe` and `dba` call it too): k a whole number >= 1, alpha a number >= 0."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"the number of neighbours k must be a whole number >= 1, got {k!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.number) or not alpha >= 0:
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}.")


def _expand(
    vectors: np.ndarray,
    database: np.ndarray,
    k: int,
    alpha: float,
    exclusion_arguments: dict[str, Any],
    max_memory_bytes: int,
) -> np.ndarray:
    if database.shape[0] == 0:
        return vectors.copy()
    exclusions = make_exclusions(vectors.shape[0], database.shape[0], **exclusion_arguments)
    expanded = np.empty_like(vectors)
    for block in iter_neighbour_blocks(
        vectors, database, min(k, database.shape[0]), exclusions, max_memory_bytes=max_memory_bytes
    ):
        expanded[block.start : block.stop] = weighted_neighbour_sum(
            vectors[block.start : block.stop], database, block.similarities, block.indices, alpha
        )
    return expanded


def query_expansion(
    queries: Any,
    gallery: Any,
    k: int,
    alpha: float,
    *,
    exclude_self: bool = False,
    exclude_index: Any = None,
    query_groups: Any = None,
    gallery_groups: Any = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> np.ndarray:
    """alpha-QE: each query (Nq, D) expanded with its top-k neighbours in the gallery (Ng, D).

    exclude_self: gallery row i is query i's own item, not to be used by it; exclude_index (Nq,): the
    gallery index of each query's own item, -1 for none (the general form). query_groups (Nq,) /
    gallery_groups (Ng,): ignore-group ids, as in evaluation. Returns unit rows (Nq, D) float32.
    """
    check_expansion(k, alpha)
    q = l2_normalize(as_embedding_matrix(queries, "queries"))
    g = l2_normalize(as_embedding_matrix(gallery, "gallery"))
    exclusion_arguments = {
        "exclude_self": exclude_self,
        "exclude_index": exclude_index,
        "query_groups": query_groups,
        "gallery_groups": gallery_groups,
    }
    return _expand(q, g, k, alpha, exclusion_arguments, max_memory_bytes)


def database_augmentation(
    gallery: Any,
    k: int,
    alpha: float,
    *,
    groups: Any = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> np.ndarray:
    """alpha-DBA: each gallery item (Ng, D) expanded with its top-k neighbours among the others.

    groups (Ng,): ignore-group ids; an item does not use the members of its own group. Returns unit rows
    (Ng, D) float32, computed from the original gallery (not updated in place row by row).
    """
    check_expansion(k, alpha)
    g = l2_normalize(as_embedding_matrix(gallery, "gallery"))
    exclusion_arguments = {"exclude_self": True, "query_groups": groups, "gallery_groups": groups}
    return _expand(g, g, k, alpha, exclusion_arguments, max_memory_bytes)
