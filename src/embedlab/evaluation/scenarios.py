"""evaluate_scenarios: named subsets of the queries, each searched in a subset of the gallery and scored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedlab.evaluation.engine import evaluate_inputs, evaluation_options
from embedlab.evaluation.inputs import validate_inputs
from embedlab.evaluation.results import RetrievalResult
from embedlab.metric_names import DEFAULT_METRICS, Average, WithoutPositives
from embedlab.retrieval.arrays import SimilarityMetric, to_numpy
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES
from embedlab.retrieval.faiss_index import IndexOptions
from embedlab.retrieval.search import SearchMethod


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
    device: Any = "auto",
) -> dict[str, RetrievalResult]:
    """Score named scenarios, each a subset of the queries searched in a subset of the gallery.

    scenarios: name -> (query selection, gallery selection), each a boolean mask over the queries /
    gallery (or an integer index array), e.g. {"top_vs_top": (is_top, is_top), "lateral_vs_top":
    (~is_top, is_top)}. Without a separate gallery both select from the query set, and an item that is
    both a selected query and a selected gallery item is hidden from itself by index. Other arguments
    (device included): as for `evaluate_retrieval`. Returns one RetrievalResult per scenario, in the
    given order.
    """
    if not scenarios:
        raise ValueError("scenarios is empty; give at least one name -> (query mask, gallery mask).")
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
    inputs = validate_inputs(
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
            results[name] = evaluate_inputs(inputs, options, q_rows, g_rows)
        except ValueError as error:
            raise ValueError(f"scenario {name!r}: {error}") from error
    return results
