"""`evaluate_shards`: retrieval metrics of embeddings stored in shards (`embedlab embed`), with neither
the queries nor the gallery in memory at once.

Queries are taken a block at a time; for each block the gallery is streamed shard by shard and only
each query's running top d is kept, d being the largest cutoff asked for or, for the R-based metrics,
the block's largest R (as the engine derives it, see engine.py). Every metric that depends on the top d
alone is computed exactly as `evaluate_retrieval` computes it: precision_at_k, recall_at_k, map_at_k,
r_precision, map_at_r. `map` and `mrr` need the rank of every positive, anywhere in the ranking, and are
refused (use `evaluate_retrieval` on arrays that fit in memory). Ties are ranked by gallery index
ascending (METRICS.md), as the engine ranks them, so both give the same numbers.

Protocol: the gallery is another shard folder, or (gallery=None) the query folder itself, each query's
own item excluded by id. Labels are matched by name across the two folders. Averages are over queries
with at least one positive (micro); the others are counted in n_queries_without_positives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from embedlab.embeddings.shards import EmbeddingShards
from embedlab.evaluation import metrics as M
from embedlab.evaluation.results import RetrievalResult
from embedlab.metric_names import DEFAULT_METRICS, parse_metrics
from embedlab.retrieval.exact import exact_neighbours
from embedlab.retrieval.exclusions import make_exclusions

#: The default metrics that each query's top d gives (see the module docstring): all but the
#: whole-ranking ones.
SHARD_METRICS: tuple[str, ...] = tuple(name for name in DEFAULT_METRICS if name not in ("map", "mrr"))
QUERY_BLOCK_ROWS = 1024


def _label_codes(shards: EmbeddingShards, names: dict[str, int]) -> np.ndarray:
    """The folder's labels as codes of a shared name table (extended as new names appear)."""
    own = [names.setdefault(name, len(names)) for name in shards.manifest.label_names]
    return np.asarray(own, dtype=np.int64)[shards.labels()] if own else np.zeros(len(shards), np.int64)


def _query_blocks(shards: EmbeddingShards, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for shard in shards:
        for start in range(0, len(shard.ids), rows):
            yield shard.ids[start : start + rows], shard.embeddings[start : start + rows]


def evaluate_shards(
    queries: str | Path | EmbeddingShards,
    gallery: str | Path | EmbeddingShards | None = None,
    *,
    metrics: Sequence[str] | str = SHARD_METRICS,
    query_block_rows: int = QUERY_BLOCK_ROWS,
) -> RetrievalResult:
    """Metrics of the query shards searched in the gallery shards (None: in themselves, each query's
    own item excluded). Memory: one block of queries, one gallery shard and the blocks' top d."""
    specs = parse_metrics(metrics)
    refused = [spec.name for spec in specs if spec.kind in ("map", "mrr")]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} need the rank of every positive, which evaluating from shards does not "
            "keep; ask for metrics of the top ranks (precision_at_k, recall_at_k, map_at_k, r_precision, "
            "map_at_r), or evaluate embeddings that fit in memory with evaluate_retrieval"
        )
    query_shards = queries if isinstance(queries, EmbeddingShards) else EmbeddingShards(queries)
    in_itself = gallery is None
    gallery_shards = (
        query_shards
        if gallery is None
        else gallery
        if isinstance(gallery, EmbeddingShards)
        else EmbeddingShards(gallery)
    )
    if gallery_shards.dim != query_shards.dim:
        raise ValueError(
            f"the queries have {query_shards.dim}-d embeddings and the gallery {gallery_shards.dim}-d; "
            "both must come from the same model"
        )
    names: dict[str, int] = {}
    query_labels = _label_codes(query_shards, names)
    gallery_labels = query_labels if in_itself else _label_codes(gallery_shards, names)
    counts = np.bincount(gallery_labels, minlength=len(names))
    n_positives = counts[query_labels] - (1 if in_itself else 0)
    cutoff = max([spec.k for spec in specs if spec.k is not None], default=1)
    needs_r = any(spec.kind in ("r_precision", "map_at_r") for spec in specs)

    values = {spec.name: np.zeros(len(query_shards)) for spec in specs}
    for ids, rows in _query_blocks(query_shards, query_block_rows):
        block_r = n_positives[ids]
        depth = min(len(gallery_shards), max(cutoff, int(block_r.max(initial=0)) if needs_r else 0))
        _, found = exact_neighbours(
            np.ascontiguousarray(rows, dtype=np.float32),
            (shard.embeddings for shard in gallery_shards),
            depth,
            make_exclusions(len(ids), len(gallery_shards), exclude_index=ids if in_itself else None),
        )
        relevant = (found >= 0) & (gallery_labels[np.maximum(found, 0)] == query_labels[ids][:, None])
        ranks = M.positive_ranks_from_relevance(relevant)
        for spec in specs:
            values[spec.name][ids] = M.metric_values(spec, ranks, block_r)

    scored = n_positives > 0
    if not scored.any():
        raise ValueError(f"none of the {len(query_shards)} queries has a positive in the gallery")
    return RetrievalResult(
        metrics={name: float(per_query[scored].mean()) for name, per_query in values.items()},
        n_queries=len(query_shards),
        n_queries_without_positives=int((~scored).sum()),
    )
