"""Every item's nearest other items, in bounded memory: the evaluation's blocked exact search up to
APPROXIMATE_ABOVE items, faiss's HNSW above (or as asked), with its recall against exact search
measured on a sample and reported.

Memory: the (N, K) lists, plus one block of similarities at a time (`max_memory_bytes`); no N x N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES
from embedlab.retrieval.recall import approximate_recall
from embedlab.retrieval.search import iter_search

NeighbourMethod = Literal["auto", "exact", "hnsw", "ivf"]
#: Items above which `auto` searches with HNSW: exact search over 200,000 items is 4 x 10^10
#: similarities, about ten minutes on two CPU cores.
APPROXIMATE_ABOVE = 200_000
#: Items whose exact neighbours the recall of an approximate search is measured against.
RECALL_SAMPLE = 1_000


@dataclass(frozen=True)
class Neighbours:
    """ids (N, K) int64 and similarities (N, K) float32, best first, -1 / -inf where fewer items remain;
    method: the search that found them; recall: recall@K of an approximate search on a sample."""

    ids: np.ndarray
    similarities: np.ndarray
    method: str
    recall: float | None = None


def resolve_method(method: NeighbourMethod, n_items: int, approximate_above: int = APPROXIMATE_ABOVE) -> str:
    if method != "auto":
        return method
    return "hnsw" if n_items > approximate_above else "exact"


def nearest_neighbours(
    embeddings: np.ndarray,
    k: int,
    *,
    method: NeighbourMethod = "auto",
    device: Any = "cpu",
    approximate_above: int = APPROXIMATE_ABOVE,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> Neighbours:
    """The k most similar other items of every row of `embeddings` (N, D) by cosine similarity."""
    n_items = embeddings.shape[0]
    k = max(1, min(k, n_items - 1))
    chosen = resolve_method(method, n_items, approximate_above)
    ids = np.full((n_items, k), -1, dtype=np.int64)
    sims = np.full((n_items, k), -np.inf, dtype=np.float32)
    for block in iter_search(
        embeddings,
        embeddings,
        k,
        exclude_self=True,
        method=chosen,  # type: ignore[arg-type]
        device=device if chosen == "exact" else "cpu",
        max_memory_bytes=max_memory_bytes,
    ):
        ids[block.start : block.stop] = block.indices
        sims[block.start : block.stop] = block.similarities
    recall = None
    if chosen != "exact":
        record = approximate_recall(
            embeddings,
            embeddings,
            k,
            method=chosen,
            sample_size=RECALL_SAMPLE,
            exclude_self=True,  # type: ignore[arg-type]
        )
        recall = record.recall
    return Neighbours(ids, sims, chosen, recall)
