"""The checked arguments of an evaluation: embeddings prepared for the similarity, int64 labels and groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedlab.retrieval.arrays import (
    SIMILARITY_METRICS,
    as_embedding_matrix,
    as_id_vector,
    check_choice,
    check_inner_products_finite,
    prepare_embeddings,
)


@dataclass(frozen=True)
class EvaluationInputs:
    """Validated inputs: float32 embeddings prepared for the similarity, int64 labels and groups."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray | None
    gallery_labels: np.ndarray | None
    query_groups: np.ndarray | None
    gallery_groups: np.ndarray | None
    # Gallery index of each query's own item in a separate gallery, -1 for none.
    exclude_index: np.ndarray | None = None


def validate_inputs(
    query_embeddings: Any,
    query_labels: Any,
    gallery_embeddings: Any,
    gallery_labels: Any,
    query_groups: Any,
    gallery_groups: Any,
    similarity: str,
) -> EvaluationInputs:
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
        return EvaluationInputs(prepared, qlabels, None, None, qgroups, None)
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
    return EvaluationInputs(q, qlabels, g, glabels, qgroups, ggroups)


def _check_products(queries: np.ndarray, gallery: np.ndarray, similarity: str) -> None:
    if similarity == "inner_product":
        check_inner_products_finite(queries, gallery)
