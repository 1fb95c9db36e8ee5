"""Retrieval evaluation: query/gallery protocols, exact metrics in bounded memory, averaging.

Protocols (METRICS.md, "Setting"):
- a query set searched in itself (`gallery_embeddings=None`): each query's own row is excluded by index;
- a query set against a separate gallery;
- ignore groups: gallery items sharing a query's group id are hidden from it;
- named scenarios (`evaluate_scenarios`): a subset of the queries against a subset of the gallery,
  each scored on its own.

How the numbers are computed: every metric is a function of each query's positive count R and the ranks
of its positives (see `embedlab.evaluation.metrics`). Queries are processed in blocks whose similarity
rows fit `max_memory_bytes`. Without `map`, only the top d of each ranking is needed, d being the
largest cutoff asked for or, for the R-based metrics, the block's largest R; the engine derives d, so
no caller-chosen k can make a metric wrong (with `map`, d is the gallery size). A compiled kernel
(`embedlab.evaluation.ranking`) ranks each row's positives within its top d in one pass, ties included,
so no list of neighbours is built; `mrr` takes the first positive's rank by counting over the whole row
when it lies beyond d.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from embedlab.evaluation import metrics as M
from embedlab.retrieval.arrays import (
    SIMILARITY_METRICS,
    SimilarityMetric,
    as_embedding_matrix,
    as_id_vector,
    check_choice,
    check_inner_products_finite,
    prepare_embeddings,
    to_numpy,
)
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES, iter_similarity_blocks
from embedlab.retrieval.exclusions import Exclusions, make_exclusions, sampled_exclusions
from embedlab.retrieval.faiss_index import IndexOptions, build_index
from embedlab.retrieval.recall import RecallRecord as ApproximateRecall
from embedlab.retrieval.recall import measure_recall
from embedlab.retrieval.search import SEARCH_METHODS, SearchMethod, iter_neighbour_blocks
from embedlab.retrieval.threads import default_num_threads

LOGGER = logging.getLogger(__name__)

Average = Literal["micro", "macro"]
WithoutPositives = Literal["exclude", "zero"]
MetricKind = Literal["precision_at_k", "recall_at_k", "r_precision", "map_at_r", "map_at_k", "map", "mrr"]

DEFAULT_METRICS: tuple[str, ...] = (
    "precision_at_1",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "r_precision",
    "map_at_r",
    "map",
)
VALID_METRIC_FORMS: tuple[str, ...] = (
    "precision_at_<k>",
    "recall_at_<k>",
    "map_at_<k>",
    "r_precision",
    "map_at_r",
    "map",
    "mrr",
)
AVERAGES: tuple[Average, ...] = ("micro", "macro")
WITHOUT_POSITIVES: tuple[WithoutPositives, ...] = ("exclude", "zero")

# A ranked block holds the float32 similarities and its positives' float64 ranks, up to one per
# similarity (when one label fills the gallery); the ranking threads' scratch is per gallery item only.
_RANKING_BYTES_PER_SIMILARITY = 12
_RECALL_SAMPLE_SIZE = 1000

_CUTOFF_PATTERN = re.compile(r"(precision|recall|map)_at_([1-9][0-9]*)")
_CUTOFF_KINDS: dict[str, MetricKind] = {
    "precision": "precision_at_k",
    "recall": "recall_at_k",
    "map": "map_at_k",
}
_PLAIN_KINDS: dict[str, MetricKind] = {
    "r_precision": "r_precision",
    "map_at_r": "map_at_r",
    "map": "map",
    "mrr": "mrr",
}


@dataclass(frozen=True)
class MetricSpec:
    """One requested metric: its name (the result key), formula kind and cutoff k (None if none)."""

    name: str
    kind: MetricKind
    k: int | None = None

    def compute(self, positive_ranks: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
        """Per-query values (Nq,) float64 from padded positive ranks (Nq, M) and R (Nq,)."""
        return _METRIC_FUNCTIONS[self.kind](positive_ranks, n_positives, self.k or 0)


_METRIC_FUNCTIONS: dict[MetricKind, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "precision_at_k": lambda ranks, _r, k: M.precision_at_k(ranks, k),
    "recall_at_k": lambda ranks, _r, k: M.recall_at_k(ranks, k),
    "r_precision": lambda ranks, r, _k: M.r_precision(ranks, r),
    "map_at_r": lambda ranks, r, _k: M.map_at_r(ranks, r),
    "map_at_k": lambda ranks, r, k: M.map_at_k(ranks, r, k),
    "map": lambda ranks, r, _k: M.average_precision(ranks, r),
    "mrr": lambda ranks, _r, _k: M.reciprocal_rank(ranks),
}


def parse_metric(name: str) -> MetricSpec:
    """Parse a metric name of METRICS.md ("precision_at_5", "map_at_r", ...); ValueError lists the forms."""
    if not isinstance(name, str):
        raise TypeError(f"metric names are strings, got {type(name).__name__}.")
    if name in _PLAIN_KINDS:
        return MetricSpec(name, _PLAIN_KINDS[name])
    match = _CUTOFF_PATTERN.fullmatch(name)
    if match:
        return MetricSpec(name, _CUTOFF_KINDS[match.group(1)], int(match.group(2)))
    examples = ["precision_at_1", "recall_at_10", "map_at_100", "r_precision", "map_at_r", "map", "mrr"]
    close = difflib.get_close_matches(name.replace("@", "_at_").lower(), examples, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown metric {name!r}; valid forms are {', '.join(VALID_METRIC_FORMS)} with k a positive "
        f"integer written without leading zeros (e.g. precision_at_5, map_at_100).{hint}"
    )


def parse_metrics(names: Sequence[str] | str) -> tuple[MetricSpec, ...]:
    """Parse metric names, given as a sequence or as one comma-separated string ("map_at_r,mrr")."""
    items = [part.strip() for part in names.split(",")] if isinstance(names, str) else list(names)
    if not items or any(item == "" for item in items):
        raise ValueError(f"metric list {names!r} is empty or has an empty entry.")
    specs = tuple(parse_metric(item) for item in items)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"metric {spec.name!r} is requested twice.")
        seen.add(spec.name)
    return specs


@dataclass(frozen=True)
class RetrievalResult:
    """The outcome of one evaluation.

    metrics: requested metric name -> value in [0, 1] (micro or macro average as requested).
    n_queries: queries evaluated, with or without positives.
    n_queries_without_positives: queries whose gallery holds no item of their label (R = 0); excluded
    from the averages or scored 0, as requested.
    per_class: label -> metric name -> mean over that label's averaged queries, when requested.
    search_recall: for approximate methods, recall@k of the index against exact search on a sample.
    """

    metrics: dict[str, float]
    n_queries: int
    n_queries_without_positives: int
    per_class: dict[int, dict[str, float]] | None = None
    search_recall: ApproximateRecall | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the metrics, n_queries and n_queries_without_positives (plus per_class with string
        keys and the approximate search recall, when present)."""
        out: dict[str, Any] = dict(self.metrics)
        out["n_queries"] = self.n_queries
        out["n_queries_without_positives"] = self.n_queries_without_positives
        if self.per_class is not None:
            out["per_class"] = {str(label): dict(values) for label, values in self.per_class.items()}
        if self.search_recall is not None:
            out["search_recall"] = {
                "method": self.search_recall.method,
                "k": self.search_recall.k,
                "n_sampled_queries": self.search_recall.n_sampled_queries,
                "recall": self.search_recall.recall,
            }
        return out


# ------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class _LabelIndex:
    """Gallery labels as dense codes, with the gallery members of each code (ascending indices)."""

    unique: np.ndarray
    gallery_codes: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @classmethod
    def build(cls, gallery_labels: np.ndarray) -> _LabelIndex:
        unique, codes = np.unique(gallery_labels, return_inverse=True)
        counts = np.bincount(codes, minlength=unique.size).astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        members = np.argsort(codes, kind="stable").astype(np.int64)
        return cls(unique, codes.astype(np.int64), counts, offsets, members)

    def codes_of(self, labels: np.ndarray) -> np.ndarray:
        """Codes of arbitrary labels, -1 for labels absent from the gallery."""
        position = np.searchsorted(self.unique, labels)
        found = position < self.unique.size
        found[found] = self.unique[position[found]] == labels[found]
        return np.where(found, position, -1).astype(np.int64)


def _positive_counts(
    query_codes: np.ndarray, labels: _LabelIndex, exclusions: Exclusions, start: int, stop: int
) -> np.ndarray:
    """R for queries[start:stop]: gallery items of the query's label minus the excluded ones."""
    codes = query_codes[start:stop]
    counts = np.where(codes >= 0, labels.counts[np.maximum(codes, 0)], 0)
    rows, cols = exclusions.pairs(start, stop)
    if rows.size:
        # The own row can also be a group member: count each excluded pair once.
        pairs = np.unique(rows.astype(np.int64) * labels.gallery_codes.size + cols)
        rows, cols = np.divmod(pairs, labels.gallery_codes.size)
        same_label = labels.gallery_codes[cols] == codes[rows]
        counts = counts - np.bincount(rows[same_label], minlength=codes.size)
    return counts.astype(np.int64)


# ------------------------------------------------------------------------------------ rank counting


@dataclass(frozen=True)
class _Plan:
    """What the requested metrics need from each ranking."""

    cutoff: int
    needs_r: bool
    needs_all: bool
    needs_first: bool

    @classmethod
    def of(cls, specs: Sequence[MetricSpec]) -> _Plan:
        kinds = {s.kind for s in specs}
        return cls(
            cutoff=max([s.k for s in specs if s.k is not None], default=1),
            needs_r=bool(kinds & {"r_precision", "map_at_r"}),
            needs_all="map" in kinds,
            needs_first="mrr" in kinds,
        )

    def depth(self, n_positives: np.ndarray) -> int:
        """Ranks needed from the top, for a block of queries with these R."""
        return max(self.cutoff, int(n_positives.max(initial=0)) if self.needs_r else 0)


def _load_ranking_kernel() -> Future[None]:
    """Import and load the compiled ranking kernel on a thread of its own.

    In a fresh process that takes about a second (numba's import and its cached machine code), which
    the caller spends validating its inputs and computing the first block of similarities instead of
    waiting; once loaded, it takes microseconds.
    """

    def load() -> None:
        from embedlab.evaluation.ranking import load_kernel

        load_kernel()

    executor = ThreadPoolExecutor(max_workers=1)
    loading = executor.submit(load)
    executor.shutdown(wait=False)
    return loading


def _block_ranks(
    similarities: np.ndarray,
    codes: np.ndarray,
    n_positives: np.ndarray,
    labels: _LabelIndex,
    plan: _Plan,
    num_threads: int,
) -> np.ndarray:
    """Padded positive ranks (rows, M) for a similarity block (rows, Ng) with exclusions at -inf.

    Each row's positives at least as similar as its d-th best item are ranked (d = Ng for `map`),
    rank = 1 + #{j: s_j > s_p} + #{j < p: s_j == s_p} (similarity descending, index ascending). With
    `mrr`, a row whose positives all lie below the top d gets its first positive's rank instead.
    """
    # numba takes about 0.7 s to import: commands that never rank exactly do not pay for it.
    from embedlab.evaluation.ranking import positive_ranks

    n_gallery = similarities.shape[1]
    depth = n_gallery if plan.needs_all else min(plan.depth(n_positives), n_gallery)
    return positive_ranks(
        similarities,
        codes,
        labels.gallery_codes,
        labels.offsets,
        labels.members,
        depth,
        first_beyond_depth=plan.needs_first,
        num_threads=num_threads,
    )


def _relevance_ranks(indices: np.ndarray, codes: np.ndarray, labels: _LabelIndex) -> np.ndarray:
    neighbour_codes = np.where(indices >= 0, labels.gallery_codes[np.maximum(indices, 0)], -1)
    relevance = (neighbour_codes == codes[:, None]) & (codes[:, None] >= 0)
    return M.positive_ranks_from_relevance(relevance)


# ------------------------------------------------------------------------------------------ engine


class Rescorer(Protocol):
    """Changes a block of query-gallery similarities in place before it is ranked: a re-ranking.

    similarities: (stop - start, Ng) float32 rows of queries[start:stop], excluded entries at -inf
    (they must stay -inf). Larger values rank first; the tie rule is unchanged.
    """

    def __call__(self, similarities: np.ndarray, start: int, stop: int) -> None: ...


@dataclass(frozen=True)
class _Options:
    specs: tuple[MetricSpec, ...]
    average: Average
    without_positives: WithoutPositives
    per_class: bool
    max_memory_bytes: int
    method: SearchMethod
    num_threads: int
    index_options: IndexOptions | None
    rescore: Rescorer | None = None
    # Exact search: the compiled ranking kernel, loading on its own thread from the moment the options
    # are read, so that its loading overlaps the validation of the inputs and the first product.
    kernel_loading: Future[None] | None = None


def _evaluate_prepared(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    exclusions: Exclusions,
    options: _Options,
) -> RetrievalResult:
    """Evaluate prepared float32 embeddings (Nq, D) / (Ng, D) with validated int64 labels."""
    labels = _LabelIndex.build(gallery_labels)
    codes = labels.codes_of(query_labels)
    plan = _Plan.of(options.specs)
    n_queries = queries.shape[0]
    values = {spec.name: np.zeros(n_queries) for spec in options.specs}
    n_positives = np.zeros(n_queries, dtype=np.int64)
    search_recall: ApproximateRecall | None = None

    def score(start: int, stop: int, ranks: np.ndarray) -> None:
        for spec in options.specs:
            values[spec.name][start:stop] = spec.compute(ranks, n_positives[start:stop])

    began = time.perf_counter()
    if options.method == "exact":
        kernel_loading = options.kernel_loading
        assert kernel_loading is not None, "_options starts loading the kernel for exact search"
        for block in iter_similarity_blocks(
            queries,
            gallery,
            exclusions,
            max_memory_bytes=options.max_memory_bytes,
            bytes_per_similarity=_RANKING_BYTES_PER_SIMILARITY,
        ):
            start, stop = block.start, block.stop
            if options.rescore is not None:
                options.rescore(block.similarities, start, stop)
            n_positives[start:stop] = _positive_counts(codes, labels, exclusions, start, stop)
            kernel_loading.result()
            ranks = _block_ranks(
                block.similarities,
                codes[start:stop],
                n_positives[start:stop],
                labels,
                plan,
                options.num_threads,
            )
            score(start, stop, ranks)
            LOGGER.debug(
                "ranked queries up to %d of %d (%.1f s)", stop, n_queries, time.perf_counter() - began
            )
    else:
        if options.rescore is not None:
            raise ValueError(f"re-ranking needs method='exact', got method={options.method!r}.")
        if plan.needs_all or plan.needs_first:
            raise ValueError(
                f"metrics 'map' and 'mrr' need the whole ranking, which method={options.method!r} does not "
                "produce; use method='exact' for them."
            )
        for start in range(0, n_queries, 65536):
            stop = min(start + 65536, n_queries)
            n_positives[start:stop] = _positive_counts(codes, labels, exclusions, start, stop)
        depth = min(plan.depth(n_positives), gallery.shape[0])
        index = build_index(gallery, options.method, options=options.index_options)
        for nblock in iter_neighbour_blocks(
            queries,
            gallery,
            depth,
            exclusions,
            method=options.method,
            max_memory_bytes=options.max_memory_bytes,
            index_options=options.index_options,
            index=index,
        ):
            score(
                nblock.start,
                nblock.stop,
                _relevance_ranks(nblock.indices, codes[nblock.start : nblock.stop], labels),
            )
            LOGGER.debug(
                "ranked queries up to %d of %d (%.1f s)", nblock.stop, n_queries, time.perf_counter() - began
            )
        sample = np.sort(
            np.random.default_rng(0).choice(
                n_queries, size=min(_RECALL_SAMPLE_SIZE, n_queries), replace=False
            )
        )
        search_recall = measure_recall(
            queries[sample],
            gallery,
            depth,
            sampled_exclusions(exclusions, sample),
            method=options.method,
            index_options=options.index_options,
            index=index,
            max_memory_bytes=options.max_memory_bytes,
        )
    return _aggregate(values, n_positives, query_labels, options, search_recall)


def _aggregate(
    values: dict[str, np.ndarray],
    n_positives: np.ndarray,
    query_labels: np.ndarray,
    options: _Options,
    search_recall: ApproximateRecall | None,
) -> RetrievalResult:
    """Average per-query values (METRICS.md, "Averaging") and assert they lie in [0, 1]."""
    without = n_positives == 0
    included = ~without if options.without_positives == "exclude" else np.ones_like(without)
    if not included.any():
        raise ValueError(
            f"none of the {n_positives.size} queries has a positive in its gallery (R = 0 for all), so "
            "no metric is defined; check the labels, or pass without_positives='zero'."
        )
    classes, class_of = np.unique(query_labels[included], return_inverse=True)
    class_sizes = np.bincount(class_of, minlength=classes.size)
    metrics: dict[str, float] = {}
    class_means: dict[str, np.ndarray] = {}
    for name, per_query in values.items():
        kept = per_query[included]
        assert np.all((kept >= 0.0) & (kept <= 1.0)), f"{name} has per-query values outside [0, 1]"
        class_means[name] = np.bincount(class_of, weights=kept, minlength=classes.size) / class_sizes
        metrics[name] = float(kept.mean() if options.average == "micro" else class_means[name].mean())
        assert 0.0 <= metrics[name] <= 1.0, f"{name} = {metrics[name]} lies outside [0, 1]"
    per_class = None
    if options.per_class:
        per_class = {
            int(label): {name: float(class_means[name][i]) for name in values}
            for i, label in enumerate(classes)
        }
    return RetrievalResult(
        metrics=metrics,
        n_queries=int(n_positives.size),
        n_queries_without_positives=int(without.sum()),
        per_class=per_class,
        search_recall=search_recall,
    )


def _options(
    metrics: Sequence[str] | str,
    average: str,
    without_positives: str,
    per_class: bool,
    max_memory_bytes: int,
    method: str,
    num_threads: int | None,
    index_options: IndexOptions | None,
) -> _Options:
    check_choice(average, AVERAGES, "average")
    check_choice(without_positives, WITHOUT_POSITIVES, "without_positives")
    check_choice(method, SEARCH_METHODS, "method")
    if max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}.")
    return _Options(
        specs=parse_metrics(metrics),
        average=average,  # type: ignore[arg-type]
        without_positives=without_positives,  # type: ignore[arg-type]
        per_class=per_class,
        max_memory_bytes=max_memory_bytes,
        method=method,  # type: ignore[arg-type]
        num_threads=num_threads or default_num_threads(),
        index_options=index_options,
        kernel_loading=_load_ranking_kernel() if method == "exact" else None,
    )


@dataclass(frozen=True)
class _Inputs:
    """Validated inputs: float32 embeddings prepared for the similarity, int64 labels and groups."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray | None
    gallery_labels: np.ndarray | None
    query_groups: np.ndarray | None
    gallery_groups: np.ndarray | None
    # Gallery index of each query's own item in a separate gallery, -1 for none.
    exclude_index: np.ndarray | None = None


def _validate(
    query_embeddings: Any,
    query_labels: Any,
    gallery_embeddings: Any,
    gallery_labels: Any,
    query_groups: Any,
    gallery_groups: Any,
    similarity: str,
) -> _Inputs:
    check_choice(similarity, SIMILARITY_METRICS, "similarity")
    queries = as_embedding_matrix(query_embeddings, "query_embeddings")
    if queries.shape[0] == 0:
        raise ValueError("query_embeddings is empty; there is nothing to evaluate.")
    qlabels = as_id_vector(query_labels, "query_labels", queries.shape[0])
    qgroups = None if query_groups is None else as_id_vector(query_groups, "query_groups", queries.shape[0])
    if gallery_embeddings is None:
        if gallery_labels is not None or gallery_groups is not None:
            raise ValueError(
                "gallery_labels/gallery_groups were given without gallery_embeddings; pass the gallery "
                "embeddings too, or drop them to search the query set in itself."
            )
        prepared = prepare_embeddings(queries, similarity)  # type: ignore[arg-type]
        _check_products(prepared, prepared, similarity)
        return _Inputs(prepared, qlabels, None, None, qgroups, None)
    gallery = as_embedding_matrix(gallery_embeddings, "gallery_embeddings")
    if gallery.shape[0] == 0:
        raise ValueError("gallery_embeddings is empty; retrieval needs at least one gallery item.")
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"query_embeddings have dimension {queries.shape[1]} but gallery_embeddings have dimension "
            f"{gallery.shape[1]}; both must come from the same model."
        )
    if gallery_labels is None:
        raise ValueError("gallery_labels are required with gallery_embeddings.")
    glabels = as_id_vector(gallery_labels, "gallery_labels", gallery.shape[0])
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("with a separate gallery, pass both query_groups and gallery_groups, or neither.")
    ggroups = (
        None if gallery_groups is None else as_id_vector(gallery_groups, "gallery_groups", gallery.shape[0])
    )
    q = prepare_embeddings(queries, similarity)  # type: ignore[arg-type]
    g = prepare_embeddings(gallery, similarity)  # type: ignore[arg-type]
    _check_products(q, g, similarity)
    return _Inputs(q, qlabels, g, glabels, qgroups, ggroups)


def _check_products(queries: np.ndarray, gallery: np.ndarray, similarity: str) -> None:
    if similarity == "inner_product":
        check_inner_products_finite(queries, gallery)


def evaluate_retrieval(
    query_embeddings: Any,
    query_labels: Any,
    gallery_embeddings: Any = None,
    gallery_labels: Any = None,
    *,
    metrics: Sequence[str] | str = DEFAULT_METRICS,
    query_groups: Any = None,
    gallery_groups: Any = None,
    average: Average = "micro",
    without_positives: WithoutPositives = "exclude",
    per_class: bool = False,
    similarity: SimilarityMetric = "cosine",
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    method: SearchMethod = "exact",
    num_threads: int | None = None,
    index_options: IndexOptions | None = None,
    exclude_index: Any = None,
    rescore: Rescorer | None = None,
) -> RetrievalResult:
    """Score retrieval of `query_embeddings` in a gallery with the metrics of METRICS.md.

    query_embeddings: (Nq, D) float array or torch tensor; query_labels: (Nq,) integer labels (an
    (N, 1) column is refused). gallery_embeddings (Ng, D) / gallery_labels (Ng,): a separate gallery;
    None searches the query set in itself, each query's own row excluded by index.
    metrics: names such as "precision_at_1", "precision_at_5", "recall_at_10", "r_precision",
    "map_at_r", "map_at_100", "map", "mrr" (a sequence or one comma-separated string); the neighbour
    depth is derived from them. query_groups (Nq,) / gallery_groups (Ng,): integer ignore-group ids,
    items sharing a query's group are hidden from it (without a separate gallery, query_groups alone).
    average: "micro" (mean over queries) or "macro" (mean of per-class means). without_positives:
    "exclude" (default) leaves queries with R = 0 out of every average, "zero" scores them 0; either way
    their number is reported. per_class: also return per-label means. similarity: "cosine" (rows
    L2-normalised) or "inner_product". max_memory_bytes: cap on the working memory of a block of
    queries (inputs not counted). method: "exact", or faiss "hnsw" / "ivf" (then the result carries the
    index's recall against exact search on a sample of 1,000 queries; 'map' and 'mrr' need "exact");
    index_options: their parameters (nlist, nprobe, M, ef). num_threads: threads of the ranking step.
    exclude_index: (Nq,) with a separate gallery, the gallery index of each query's own item, -1 for none;
    hidden from it as in the search of a set in itself (for example a set searched in its copy after
    database-side augmentation: numpy.arange(Nq)). rescore: a re-ranking applied to each block of
    similarities before it is ranked (see `Rescorer`; exact search only).

    Raises ValueError for labels that are not 1-D integers, mismatched lengths or dimensions, NaN or
    infinite embeddings, an empty query set or gallery, and unknown metric names.
    """
    options = _options(
        metrics, average, without_positives, per_class, max_memory_bytes, method, num_threads, index_options
    )
    options = replace(options, rescore=rescore)
    inputs = _validate(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        query_groups,
        gallery_groups,
        similarity,
    )
    if exclude_index is not None:
        if inputs.gallery is None:
            raise ValueError(
                "exclude_index needs a separate gallery; a set searched in itself already hides each "
                "query's own row."
            )
        own = make_exclusions(
            inputs.queries.shape[0], inputs.gallery.shape[0], exclude_index=exclude_index
        ).self_index
        inputs = replace(inputs, exclude_index=own)
    return _evaluate_inputs(inputs, options, query_subset=None, gallery_subset=None)


def _evaluate_inputs(
    inputs: _Inputs,
    options: _Options,
    query_subset: np.ndarray | None,
    gallery_subset: np.ndarray | None,
) -> RetrievalResult:
    """Evaluate validated inputs, optionally restricted to index subsets of the queries and gallery."""
    q_rows = np.arange(inputs.queries.shape[0]) if query_subset is None else query_subset
    in_itself = inputs.gallery is None
    gallery = inputs.queries if in_itself else inputs.gallery
    gallery_labels = inputs.query_labels if in_itself else inputs.gallery_labels
    gallery_groups = inputs.query_groups if in_itself else inputs.gallery_groups
    assert gallery is not None and gallery_labels is not None
    g_rows = np.arange(gallery.shape[0]) if gallery_subset is None else gallery_subset
    if g_rows.size == 0:
        raise ValueError("the gallery is empty; retrieval needs at least one gallery item.")
    if q_rows.size == 0:
        raise ValueError("the query set is empty; there is nothing to evaluate.")
    exclude_index = None
    if in_itself or inputs.exclude_index is not None:
        # The same item may be both a query and a gallery item: hide it from itself by index. The extra
        # last slot maps -1 (no own item) to -1.
        position = np.full(gallery.shape[0] + 1, -1, dtype=np.int64)
        position[g_rows] = np.arange(g_rows.size)
        exclude_index = position[q_rows if in_itself else inputs.exclude_index[q_rows]]
    exclusions = make_exclusions(
        q_rows.size,
        g_rows.size,
        exclude_index=exclude_index,
        query_groups=None if inputs.query_groups is None else inputs.query_groups[q_rows],
        gallery_groups=None if gallery_groups is None else gallery_groups[g_rows],
    )
    full_queries = query_subset is None
    full_gallery = gallery_subset is None
    return _evaluate_prepared(
        inputs.queries if full_queries else inputs.queries[q_rows],
        inputs.query_labels if full_queries else inputs.query_labels[q_rows],
        gallery if full_gallery else gallery[g_rows],
        gallery_labels if full_gallery else gallery_labels[g_rows],
        exclusions,
        options,
    )


def _subset_rows(selection: Any, size: int, what: str) -> np.ndarray:
    """Rows picked by a boolean mask (length `size`) or an array of integer indices."""
    array = to_numpy(selection)
    if array.dtype == np.bool_:
        if array.shape != (size,):
            raise ValueError(f"{what} mask must have shape ({size},), got {array.shape}.")
        return np.flatnonzero(array)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be a boolean mask of shape ({size},) or a 1-D integer index array.")
    if array.size and (array.min() < 0 or array.max() >= size):
        raise ValueError(f"{what} indices must lie in [0, {size - 1}].")
    if np.unique(array).size != array.size:
        raise ValueError(f"{what} indices must not repeat.")
    return np.sort(array.astype(np.int64))


def evaluate_scenarios(
    query_embeddings: Any,
    query_labels: Any,
    gallery_embeddings: Any = None,
    gallery_labels: Any = None,
    *,
    scenarios: Mapping[str, tuple[Any, Any]],
    metrics: Sequence[str] | str = DEFAULT_METRICS,
    query_groups: Any = None,
    gallery_groups: Any = None,
    average: Average = "micro",
    without_positives: WithoutPositives = "exclude",
    per_class: bool = False,
    similarity: SimilarityMetric = "cosine",
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    method: SearchMethod = "exact",
    num_threads: int | None = None,
    index_options: IndexOptions | None = None,
) -> dict[str, RetrievalResult]:
    """Score named scenarios, each a subset of the queries searched in a subset of the gallery.

    scenarios: name -> (query selection, gallery selection), each a boolean mask over the queries /
    gallery (or an integer index array), e.g. {"top_vs_top": (is_top, is_top), "lateral_vs_top":
    (~is_top, is_top)}. Without a separate gallery both select from the query set, and an item that is
    both a selected query and a selected gallery item is hidden from itself by index. Other arguments:
    as for `evaluate_retrieval`. Returns one RetrievalResult per scenario, in the given order.
    """
    if not scenarios:
        raise ValueError("scenarios is empty; give at least one name -> (query mask, gallery mask).")
    options = _options(
        metrics, average, without_positives, per_class, max_memory_bytes, method, num_threads, index_options
    )
    inputs = _validate(
        query_embeddings,
        query_labels,
        gallery_embeddings,
        gallery_labels,
        query_groups,
        gallery_groups,
        similarity,
    )
    n_gallery = (inputs.queries if inputs.gallery is None else inputs.gallery).shape[0]
    results: dict[str, RetrievalResult] = {}
    for name, selection in scenarios.items():
        if not (isinstance(selection, tuple) and len(selection) == 2):
            raise ValueError(f"scenario {name!r} must be a (query selection, gallery selection) pair.")
        q_rows = _subset_rows(selection[0], inputs.queries.shape[0], f"scenario {name!r} query selection")
        g_rows = _subset_rows(selection[1], n_gallery, f"scenario {name!r} gallery selection")
        try:
            results[name] = _evaluate_inputs(inputs, options, q_rows, g_rows)
        except ValueError as error:
            raise ValueError(f"scenario {name!r}: {error}") from error
    return results


# -------------------------------------------------------------------------------------------- files


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} file {str(path)!r} is not a readable .npy array: {error}") from error


def _expect_matrix(array: np.ndarray, path: str | Path, what: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{what} file {str(path)!r} holds shape {array.shape}; expected (N, D).")


def _expect_vector(array: np.ndarray, length: int, path: str | Path, what: str) -> None:
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{what} file {str(path)!r} holds shape {array.shape}; expected ({length},).")


@dataclass(frozen=True)
class EmbeddingFiles:
    """The arrays of `embedlab evaluate`'s .npy files, checked (gallery and groups optional)."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray | None = None
    gallery_labels: np.ndarray | None = None
    query_groups: np.ndarray | None = None
    gallery_groups: np.ndarray | None = None


def load_embedding_files(
    query_embeddings_path: str | Path,
    query_labels_path: str | Path,
    gallery_embeddings_path: str | Path | None = None,
    gallery_labels_path: str | Path | None = None,
    groups_path: str | Path | None = None,
) -> EmbeddingFiles:
    """Load and check the .npy files of `embedlab evaluate`.

    Query embeddings (Nq, D) and labels (Nq,); optionally gallery embeddings (Ng, D) and labels (Ng,),
    given together; optionally ignore-group ids: (Nq,) without a gallery, or (Nq + Ng,) with one (the
    query items first, then the gallery items). Errors name the file and the shape it holds.
    """
    if (gallery_embeddings_path is None) != (gallery_labels_path is None):
        raise ValueError("give both the gallery embeddings and the gallery labels files, or neither.")
    queries = _load_npy(query_embeddings_path, "query embeddings")
    _expect_matrix(queries, query_embeddings_path, "query embeddings")
    query_labels = _load_npy(query_labels_path, "query labels")
    _expect_vector(query_labels, queries.shape[0], query_labels_path, "query labels")
    gallery = gallery_labels = None
    if gallery_embeddings_path is not None and gallery_labels_path is not None:
        gallery = _load_npy(gallery_embeddings_path, "gallery embeddings")
        _expect_matrix(gallery, gallery_embeddings_path, "gallery embeddings")
        gallery_labels = _load_npy(gallery_labels_path, "gallery labels")
        _expect_vector(gallery_labels, gallery.shape[0], gallery_labels_path, "gallery labels")
    query_groups = gallery_groups = None
    if groups_path is not None:
        groups = _load_npy(groups_path, "groups")
        n_query = queries.shape[0]
        expected = n_query + (0 if gallery is None else gallery.shape[0])
        _expect_vector(groups, expected, groups_path, "groups")
        query_groups = groups[:n_query]
        gallery_groups = None if gallery is None else groups[n_query:]
    return EmbeddingFiles(queries, query_labels, gallery, gallery_labels, query_groups, gallery_groups)


def evaluate_embedding_files(
    query_embeddings_path: str | Path,
    query_labels_path: str | Path,
    gallery_embeddings_path: str | Path | None = None,
    gallery_labels_path: str | Path | None = None,
    groups_path: str | Path | None = None,
    metrics: Sequence[str] | str | None = None,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> RetrievalResult:
    """Evaluate embeddings saved as .npy files (for `embedlab evaluate`; the files as in
    `load_embedding_files`). metrics: names or a comma-separated string; None means DEFAULT_METRICS."""
    files = load_embedding_files(
        query_embeddings_path, query_labels_path, gallery_embeddings_path, gallery_labels_path, groups_path
    )
    return evaluate_retrieval(
        files.queries,
        files.query_labels,
        files.gallery,
        files.gallery_labels,
        metrics=DEFAULT_METRICS if metrics is None else metrics,
        query_groups=files.query_groups,
        gallery_groups=files.gallery_groups,
        max_memory_bytes=max_memory_bytes,
    )


def format_metrics_table(result: RetrievalResult, title: str | None = "Retrieval metrics") -> Any:
    """A rich Table of the metrics (4 decimals) followed by the query counts."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_section()
    table.add_row("n_queries", str(result.n_queries))
    table.add_row("n_queries_without_positives", str(result.n_queries_without_positives))
    if result.search_recall is not None:
        recall = result.search_recall
        table.add_row(f"{recall.method} recall@{recall.k} vs exact", f"{recall.recall:.4f}")
    return table
