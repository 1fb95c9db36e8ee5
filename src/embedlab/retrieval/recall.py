"""recall@k of a faiss index against exact search: one measurement (`measure_recall`), one record.

recall@k = sum over the sampled queries of |found top-k  intersect  exact top-k|, divided by the sum of
|exact top-k| (ids -1 ignored); 1.0 when exact search finds nothing. Both searches apply the same
exclusions, and exact search ranks ties by gallery index (METRICS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedlab.retrieval.arrays import SimilarityMetric, prepare_pair, sample_rows
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES, exact_neighbours, iter_exact_neighbour_blocks
from embedlab.retrieval.exclusions import Exclusions, make_exclusions, sampled_exclusions
from embedlab.retrieval.faiss_index import IndexKind, IndexOptions, build_index, iter_index_neighbour_blocks


class RecallRecord(BaseModel):
    """recall@k of a faiss index against exact search, over n_queries sampled queries.

    Index manifests store it (k, n_queries, recall); `method`, the kind of index measured, is left out of
    them, since their faiss record names the kind.
    """

    model_config = ConfigDict(extra="forbid")

    k: int = Field(gt=0)
    n_queries: int = Field(ge=0)
    recall: float = Field(ge=0.0, le=1.0)
    method: IndexKind | None = Field(None, exclude=True)


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """|approximate top-k ∩ exact top-k| summed over queries / |exact top-k| summed (ids -1 ignored)."""
    hits = total = 0
    for found, truth in zip(approximate_ids, exact_ids, strict=True):
        truth = truth[truth >= 0]
        hits += np.intersect1d(found[found >= 0], truth).size
        total += truth.size
    return hits / total if total else 1.0


def measure_recall(
    queries: np.ndarray,
    gallery: np.ndarray | Iterable[np.ndarray],
    k: int,
    exclusions: Exclusions,
    *,
    method: IndexKind | None = None,
    index_options: IndexOptions | None = None,
    index: Any = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> RecallRecord:
    """recall@k of a faiss index for prepared queries (n, D) with their exclusions.

    gallery: the prepared gallery (Ng, D) in memory, or its rows streamed as blocks in id order (read
    once, for the exact search). index: the faiss index measured; without it, one of kind `method` is
    built over the in-memory gallery. index_options: its search parameters (default IndexOptions()).
    method: the kind measured, as the record reports it.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    options = index_options or IndexOptions()
    if isinstance(gallery, np.ndarray):
        blocks = iter_exact_neighbour_blocks(
            queries, gallery, k, exclusions, max_memory_bytes=max_memory_bytes
        )
        exact = np.concatenate([block.indices for block in blocks])
        if index is None:
            if method is None:
                raise ValueError("measure_recall needs the index, or the method to build it with.")
            index = build_index(gallery, method, options=options)
    else:
        if index is None:
            raise ValueError("a gallery streamed as blocks needs its index: pass index=...")
        _, exact = exact_neighbours(queries, gallery, k, exclusions)
    found = np.concatenate(
        [
            block.indices
            for block in iter_index_neighbour_blocks(
                index, queries, k, exclusions, options=options, max_memory_bytes=max_memory_bytes
            )
        ]
    )
    return RecallRecord(method=method, k=k, n_queries=queries.shape[0], recall=recall_at_k(found, exact))


def approximate_recall(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    method: IndexKind,
    metric: SimilarityMetric = "cosine",
    sample_size: int = 1000,
    seed: int = 0,
    exclude_self: bool = False,
    query_groups: Any = None,
    gallery_groups: Any = None,
    index_options: IndexOptions | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> RecallRecord:
    """recall@k of an approximate method against exact search on a random sample of queries.

    queries (Nq, D), gallery (Ng, D): as for `search`, with the same exclusions. Up to `sample_size`
    queries are drawn without replacement (numpy Generator seeded by `seed`).
    """
    q, g = prepare_pair(queries, gallery, metric)
    sample = sample_rows(q.shape[0], sample_size, seed)
    exclusions = make_exclusions(
        q.shape[0],
        g.shape[0],
        exclude_self=exclude_self,
        query_groups=query_groups,
        gallery_groups=gallery_groups,
    )
    return measure_recall(
        q[sample],
        g,
        k,
        sampled_exclusions(exclusions, sample),
        method=method,
        index_options=index_options,
        max_memory_bytes=max_memory_bytes,
    )
