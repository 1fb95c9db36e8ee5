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


def check_validation_has_positives(query: LabelledImages, gallery: LabelledImages | None) -> None:
    """Raise ValueError, before any training, when no validation query has a positive to find (every
    metric would be undefined after the first epoch)."""
    placeholder = np.zeros((len(query), 1), dtype=np.float32)
    other = None if gallery is None else np.zeros((len(gallery), 1), dtype=np.float32)
    counts = validation_problem(placeholder, other, query, gallery).positive_counts()
    if not (counts > 0).any():
        searched = "the training images" if gallery is not None else "the validation set itself"
        raise ValueError(
            f"no validation query has a positive: each of the {counts.size} queries ({query.name}) is the "
            f"only image of its identity in what it searches ({searched}, less itself and its group); "
            "give identities at least two validation images, or use data.validation.split=images"
        )
