"""The validation problem of a run: its queries against its gallery, with labels, groups and roles,
as every epoch's scoring and a finished run's evaluation pose it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedlab.data.images import LabelledImages
from embedlab.evaluation import RetrievalResult
from embedlab.evaluation.steps import RetrievalProblem


def _numpy(values: object) -> np.ndarray | None:
    return None if values is None else values.numpy()  # type: ignore[attr-defined]


def validation_problem(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray | None,
    query: LabelledImages,
    gallery: LabelledImages | None,
) -> RetrievalProblem:
    """The queries against the gallery (None: the queries themselves, own rows excluded), with their
    labels and ignore groups. When the validation set searches itself and carries a CSV's `is_query` /
    `is_gallery` roles, only the items marked as queries search, among the items marked as gallery."""
    if gallery is not None:
        return RetrievalProblem.build(
            query_embeddings,
            query.labels.numpy(),
            gallery_embeddings,
            gallery.labels.numpy(),
            query_groups=_numpy(query.groups),
            gallery_groups=_numpy(gallery.groups),
        )
    return RetrievalProblem.build(
        query_embeddings,
        query.labels.numpy(),
        query_groups=_numpy(query.groups),
        query_rows=None if query.is_query is None else np.flatnonzero(query.is_query.numpy()),
        gallery_rows=None if query.is_gallery is None else np.flatnonzero(query.is_gallery.numpy()),
    )


def score_validation(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray | None,
    query: LabelledImages,
    gallery: LabelledImages | None,
    metrics: Sequence[str],
) -> RetrievalResult:
    """Metrics of the validation problem (see `validation_problem`)."""
    return validation_problem(query_embeddings, gallery_embeddings, query, gallery).score(metrics)
