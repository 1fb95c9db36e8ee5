"""k-nearest-neighbour search of queries in a gallery: exact by default, or through a faiss index.

Ranking follows the retrieval metric definitions (METRICS.md, "Setting"): similarity descending, ties
broken by gallery index ascending, so every result is deterministic. Similarity is cosine (the rows are
L2-normalised first) unless `metric="inner_product"` is asked for. Exact search is the chunked matrix
product of `embedlab.retrieval.exact`; faiss's HNSW and IVF indexes serve approximate search on request,
and `embedlab.retrieval.recall.approximate_recall` measures what they cost in recall.

On a GPU (`device`, see `embedlab.retrieval.devices`), exact search is a torch block product with the
same tie rule (`embedlab.retrieval.torch_exact`), and IVF runs on faiss's GPU index where faiss has GPU
support; HNSW, which faiss has only on the CPU, and IVF without faiss-gpu stay on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from embedlab.retrieval.arrays import SimilarityMetric, check_choice, prepare_pair
from embedlab.retrieval.devices import resolve_device
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES, iter_exact_neighbour_blocks
from embedlab.retrieval.exclusions import Exclusions, make_exclusions
from embedlab.retrieval.faiss_index import (
    IndexOptions,
    build_index,
    iter_index_neighbour_blocks,
    set_search_parameters,
)
from embedlab.retrieval.topk import NeighbourBlock

SearchMethod = Literal["exact", "hnsw", "ivf"]

SEARCH_METHODS: tuple[SearchMethod, ...] = ("exact", "hnsw", "ivf")


def iter_neighbour_blocks(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclusions: Exclusions,
    *,
    method: SearchMethod = "exact",
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    num_threads: int | None = None,
    index_options: IndexOptions | None = None,
    index: Any = None,
    torch_device: str | None = None,
) -> Iterator[NeighbourBlock]:
    """Yield top-k neighbours block by block of query rows, over prepared (float32) embeddings.

    Exact search ranks each similarity block with `top_k`. Approximate methods query a faiss index
    (built here unless `index` is given), fetching k plus the most items any query can have excluded,
    then drop the exclusions and re-rank what was returned by the tie rule. torch_device (a resolved
    device, see `resolve_device`): exact search with torch there, IVF on faiss's GPU index if faiss has
    GPU support; None: on the CPU.
    """
    check_choice(method, SEARCH_METHODS, "method")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if method == "exact":
        if torch_device is not None:
            import torch

            from embedlab.retrieval.torch_exact import iter_torch_neighbour_blocks

            yield from iter_torch_neighbour_blocks(
                queries, gallery, k, exclusions, torch.device(torch_device), max_memory_bytes=max_memory_bytes
            )
            return
        yield from iter_exact_neighbour_blocks(
            queries, gallery, k, exclusions, max_memory_bytes=max_memory_bytes, num_threads=num_threads
        )
        return
    options = index_options or IndexOptions()
    faiss_index = index if index is not None else build_index(gallery, method, options=options)
    if method == "ivf" and index is None and torch_device is not None and torch_device.startswith("cuda"):
        from embedlab.retrieval.faiss_gpu import faiss_has_gpu, index_on_gpu

        if faiss_has_gpu():
            # The GPU copy takes nprobe from the CPU index, whose parameters faiss can set.
            set_search_parameters(faiss_index, nprobe=options.ivf_nprobe, ef_search=options.hnsw_ef_search)
            faiss_index = index_on_gpu(faiss_index, torch_device)
    yield from iter_index_neighbour_blocks(
        faiss_index, queries, k, exclusions, options=options, max_memory_bytes=max_memory_bytes
    )


def iter_search(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    metric: SimilarityMetric = "cosine",
    exclude_self: bool = False,
    exclude_index: Any = None,
    query_groups: Any = None,
    gallery_groups: Any = None,
    method: SearchMethod = "exact",
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    num_threads: int | None = None,
    index_options: IndexOptions | None = None,
    device: Any = "cpu",
) -> Iterator[NeighbourBlock]:
    """Streaming form of `search`: yields a NeighbourBlock per block of query rows (see `search`)."""
    q, g = prepare_pair(queries, gallery, metric)
    exclusions = make_exclusions(
        q.shape[0],
        g.shape[0],
        exclude_self=exclude_self,
        exclude_index=exclude_index,
        query_groups=query_groups,
        gallery_groups=gallery_groups,
    )
    yield from iter_neighbour_blocks(
        q,
        g,
        k,
        exclusions,
        method=method,
        max_memory_bytes=max_memory_bytes,
        num_threads=num_threads,
        index_options=index_options,
        torch_device=resolve_device(device),
    )


def search(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    metric: SimilarityMetric = "cosine",
    exclude_self: bool = False,
    exclude_index: Any = None,
    query_groups: Any = None,
    gallery_groups: Any = None,
    method: SearchMethod = "exact",
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    num_threads: int | None = None,
    index_options: IndexOptions | None = None,
    device: Any = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest gallery items of every query.

    queries: (Nq, D), gallery: (Ng, D), numpy arrays or torch tensors (pass the same object twice and
    exclude_self=True to search a set in itself). metric: "cosine" (rows L2-normalised) or
    "inner_product". Exclusions: see `make_exclusions`. method: "exact" (default), "hnsw" or "ivf"
    (faiss; check their cost with `approximate_recall`). max_memory_bytes caps the working memory of a
    block of queries (inputs not counted; on a GPU, blocks are sized from its free memory instead).
    device: "cpu" (default), "auto" (a GPU when torch sees one), "cuda" or "cuda:N"; exact search on a
    GPU returns the same neighbours, ties included.

    Returns similarities (Nq, k) float32 and indices (Nq, k) int64, each row ranked by similarity
    descending with ties broken by gallery index ascending (METRICS.md); where fewer than k items remain
    the tail holds index -1 and similarity -inf.
    """
    blocks = list(
        iter_search(
            queries,
            gallery,
            k,
            metric=metric,
            exclude_self=exclude_self,
            exclude_index=exclude_index,
            query_groups=query_groups,
            gallery_groups=gallery_groups,
            method=method,
            max_memory_bytes=max_memory_bytes,
            num_threads=num_threads,
            index_options=index_options,
            device=device,
        )
    )
    if not blocks:
        return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
    return (
        np.concatenate([b.similarities for b in blocks]),
        np.concatenate([b.indices for b in blocks]),
    )
