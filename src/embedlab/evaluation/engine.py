"""evaluate_retrieval: query/gallery protocols, exact metrics in bounded memory, averaging.

Protocols (METRICS.md, "Setting"):
- a query set searched in itself (`gallery_embeddings=None`): each query's own row is excluded by index;
- a query set against a separate gallery;
- ignore groups: gallery items sharing a query's group id are hidden from it;
- named scenarios (`evaluate_scenarios`, in scenarios.py): a subset of the queries against a subset of
  the gallery, each scored on its own.

How the numbers are computed: every metric is a function of each query's positive count R and the ranks
of its positives (see `embedlab.evaluation.metrics`). Queries are processed in blocks whose similarity
rows fit `max_memory_bytes`. Without `map`, only the top d of each ranking is needed, d being the
largest cutoff asked for or, for the R-based metrics, the block's largest R; the engine derives d, so
no caller-chosen k can make a metric wrong (with `map`, d is the gallery size). A compiled kernel
(`embedlab.evaluation.ranking`) ranks each row's positives within its top d in one pass, ties included,
so no list of neighbours is built; `mrr` takes the first positive's rank by counting over the whole row
when it lies beyond d.

On a GPU (`device`), the same blocks are ranked with torch by the same rules
(`embedlab.evaluation.device_engine`): the same ranks, so the same metric formulas and averaging here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from embedlab.evaluation.inputs import EvaluationInputs, validate_inputs
from embedlab.evaluation.labels import LabelIndex, positive_counts
from embedlab.evaluation.metrics import metric_values
from embedlab.evaluation.ranks import RankPlan, block_ranks, load_ranking_kernel, relevance_ranks
from embedlab.evaluation.results import RetrievalResult
from embedlab.metric_names import (
    AVERAGES,
    DEFAULT_METRICS,
    WITHOUT_POSITIVES,
    Average,
    MetricSpec,
    WithoutPositives,
    parse_metrics,
)
from embedlab.retrieval.arrays import SimilarityMetric, check_choice
from embedlab.retrieval.devices import resolve_device
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES, iter_similarity_blocks
from embedlab.retrieval.exclusions import Exclusions, make_exclusions, sampled_exclusions
from embedlab.retrieval.faiss_index import IndexOptions, build_index
from embedlab.retrieval.recall import RecallRecord, measure_recall
from embedlab.retrieval.search import SEARCH_METHODS, SearchMethod, iter_neighbour_blocks
from embedlab.retrieval.threads import default_num_threads

LOGGER = logging.getLogger(__name__)

# A ranked block holds the float32 similarities and its positives' float64 ranks, up to one per
# similarity (when one label fills the gallery); the ranking threads' scratch is per gallery item only.
_RANKING_BYTES_PER_SIMILARITY = 12
_RECALL_SAMPLE_SIZE = 1000


class Rescorer(Protocol):
    """Changes a block of query-gallery similarities in place before it is ranked: a re-ranking.

    similarities: (stop - start, Ng) float32 rows of queries[start:stop], excluded entries at -inf
    (they must stay -inf). Larger values rank first; the tie rule is unchanged.
    """

    def __call__(self, similarities: np.ndarray, start: int, stop: int) -> None: ...


@dataclass(frozen=True)
class EvaluationOptions:
    """The checked options of one evaluation, shared by `evaluate_retrieval` and `evaluate_scenarios`."""

    specs: tuple[MetricSpec, ...]
    average: Average
    without_positives: WithoutPositives
    per_class: bool
    max_memory_bytes: int
    method: SearchMethod
    num_threads: int
    index_options: IndexOptions | None
    rescore: Rescorer | None = None
    # The torch device of exact evaluation ("cuda", "cuda:1"; "cpu" in tests), None for the numpy engine.
    torch_device: str | None = None
    # Exact search: the compiled ranking kernel, loading on its own thread from the moment the options
    # are read, so that its loading overlaps the validation of the inputs and the first product.
    kernel_loading: Future[None] | None = None


def _evaluate_prepared(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    exclusions: Exclusions,
    options: EvaluationOptions,
) -> RetrievalResult:
    """Evaluate prepared float32 embeddings (Nq, D) / (Ng, D) with validated int64 labels."""
    labels = LabelIndex.build(gallery_labels)
    codes = labels.codes_of(query_labels)
    plan = RankPlan.of(options.specs)
    n_queries = queries.shape[0]
    values = {spec.name: np.zeros(n_queries) for spec in options.specs}
    n_positives = np.zeros(n_queries, dtype=np.int64)
    search_recall: RecallRecord | None = None

    def score(start: int, stop: int, ranks: np.ndarray) -> None:
        for spec in options.specs:
            values[spec.name][start:stop] = metric_values(spec, ranks, n_positives[start:stop])

    began = time.perf_counter()
    if options.method == "exact" and options.torch_device is not None:
        import torch

        from embedlab.evaluation.device_engine import iter_device_ranks

        for ranked in iter_device_ranks(
            queries,
            gallery,
            codes,
            labels,
            exclusions,
            plan,
            torch.device(options.torch_device),
            max_memory_bytes=options.max_memory_bytes,
            rescore=options.rescore,
        ):
            n_positives[ranked.start : ranked.stop] = ranked.n_positives
            score(ranked.start, ranked.stop, ranked.ranks)
            LOGGER.debug(
                "ranked queries up to %d of %d on %s (%.1f s)",
                ranked.stop,
                n_queries,
                options.torch_device,
                time.perf_counter() - began,
            )
    elif options.method == "exact":
        kernel_loading = options.kernel_loading
        assert kernel_loading is not None, "evaluation_options starts loading the kernel for exact search"
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
            n_positives[start:stop] = positive_counts(codes, labels, exclusions, start, stop)
            kernel_loading.result()
            ranks = block_ranks(
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
            n_positives[start:stop] = positive_counts(codes, labels, exclusions, start, stop)
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
                relevance_ranks(nblock.indices, codes[nblock.start : nblock.stop], labels),
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
    options: EvaluationOptions,
    search_recall: RecallRecord | None,
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


def evaluation_options(
    metrics: Sequence[str] | str,
    average: str,
    without_positives: str,
    per_class: bool,
    max_memory_bytes: int,
    method: str,
    num_threads: int | None,
    index_options: IndexOptions | None,
    device: Any = "auto",
) -> EvaluationOptions:
    """Check the options and parse the metric names; for exact search, pick the device (see
    `resolve_device`) and, on the CPU, start loading the kernel."""
    check_choice(average, AVERAGES, "average")
    check_choice(without_positives, WITHOUT_POSITIVES, "without_positives")
    check_choice(method, SEARCH_METHODS, "method")
    if max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}.")
    torch_device = resolve_device(device)
    if method != "exact" and torch_device is not None:
        if device != "auto":
            raise ValueError(
                f"device={device!r} evaluates exactly (method='exact'); method={method!r} searches a faiss "
                "index on the CPU, so pass device='cpu' or 'auto' with it."
            )
        torch_device = None
    return EvaluationOptions(
        specs=parse_metrics(metrics),
        average=average,  # type: ignore[arg-type]
        without_positives=without_positives,  # type: ignore[arg-type]
        per_class=per_class,
        max_memory_bytes=max_memory_bytes,
        method=method,  # type: ignore[arg-type]
        num_threads=num_threads or default_num_threads(),
        index_options=index_options,
        torch_device=torch_device,
        kernel_loading=load_ranking_kernel() if method == "exact" and torch_device is None else None,
    )


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
    device: Any = "auto",
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
    similarities before it is ranked (see `Rescorer`; exact search only; on a GPU each block is copied
    to the host and back for it). device: where exact evaluation computes: "auto" (default: a GPU when
    torch sees one, else the CPU, deciding without importing torch where no NVIDIA device exists),
    "cpu" (the numpy engine), "cuda" or "cuda:N" (the torch engine; an error without that GPU), or a
    torch.device (the torch engine on it; torch.device("cpu") runs the GPU code path on the CPU). Both
    engines rank by the same rules and give the same values; on a GPU, blocks of queries are sized from
    its free memory (not max_memory_bytes) and halved when it runs out.

    Raises ValueError for labels that are not 1-D integers, mismatched lengths or dimensions, NaN or
    infinite embeddings, an empty query set or gallery, unknown metric names, and a GPU device that
    torch does not see.
    """
    options = evaluation_options(
        metrics,
        average,
        without_positives,
        per_class,
        max_memory_bytes,
        method,
        num_threads,
        index_options,
        device,
    )
    options = replace(options, rescore=rescore)
    inputs = validate_inputs(
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
    return evaluate_inputs(inputs, options, query_subset=None, gallery_subset=None)


def evaluate_inputs(
    inputs: EvaluationInputs,
    options: EvaluationOptions,
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
