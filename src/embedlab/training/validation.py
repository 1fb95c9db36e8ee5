"""The validation problem of a run: its queries against its gallery, with labels, groups and roles,
as every epoch's scoring and a finished run's evaluation pose it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

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


def _label_free_problem(query: LabelledImages, gallery: LabelledImages | None) -> RetrievalProblem:
    """The validation problem with placeholder embeddings (its labels, groups and roles are real)."""
    placeholder = np.zeros((len(query), 1), dtype=np.float32)
    other = None if gallery is None else np.zeros((len(gallery), 1), dtype=np.float32)
    return validation_problem(placeholder, other, query, gallery)


@dataclass(frozen=True)
class ValidationSummary:
    """What every epoch scores: queries, gallery items, the identities of the queries, the queries with
    no positive to find (R = 0) and those whose every visible gallery item is a positive (any ranking
    scores 1.0 on them)."""

    queries: int
    gallery: int
    searches_itself: bool
    identities: int
    without_positives: int
    all_positive: int

    def lines(self) -> list[str]:
        searched = "the validation set itself" if self.searches_itself else "the training images"
        return [
            f"validation: {self.queries} queries, {self.gallery} gallery items ({searched}), "
            f"{self.identities} {'identity' if self.identities == 1 else 'identities'} among the queries, "
            f"{self.without_positives} queries without positives"
        ]

    def warnings(self) -> list[str]:
        """A sentence for each way in which this evaluation cannot tell models apart."""
        found = []
        if self.identities == 1:
            found.append(
                "every validation query is of one identity, so the metrics say little about how "
                "identities are told apart; give the validation split more identities"
            )
        if self.all_positive:
            found.append(
                f"{self.all_positive} of {self.queries} validation queries search a gallery in which every "
                "item they can see is of their own identity, so they score 1.0 whatever the model does; "
                "check the split and the is_query/is_gallery roles"
            )
        if self.without_positives * 2 > self.queries:
            found.append(
                f"{self.without_positives} of {self.queries} validation queries have no positive to find "
                "and are left out of every metric; give identities at least two validation images"
            )
        return found


def summarize_validation(query: LabelledImages, gallery: LabelledImages | None) -> ValidationSummary:
    """The counts of the validation problem (see `validation_problem`), before any embedding."""
    problem = _label_free_problem(query, gallery)
    positives = problem.positive_counts()
    # With every label the same, each query's "positives" are all the gallery items it can see.
    visible = dataclasses.replace(
        problem,
        query_labels=np.zeros(len(problem.query_labels), dtype=np.int64),
        gallery_labels=np.zeros(len(problem.gallery_labels), dtype=np.int64),
    ).positive_counts()
    return ValidationSummary(
        queries=int(positives.size),
        gallery=len(problem.gallery_labels),
        searches_itself=gallery is None,
        identities=len(np.unique(problem.query_labels)),
        without_positives=int((positives == 0).sum()),
        all_positive=int(((positives == visible) & (positives > 0)).sum()),
    )


def check_validation_has_positives(query: LabelledImages, gallery: LabelledImages | None) -> None:
    """Raise ValueError, before any training, when no validation query has a positive to find (every
    metric would be undefined after the first epoch)."""
    counts = _label_free_problem(query, gallery).positive_counts()
    if not (counts > 0).any():
        searched = "the training images" if gallery is not None else "the validation set itself"
        raise ValueError(
            f"no validation query has a positive: each of the {counts.size} queries ({query.name}) is the "
            f"only image of its identity in what it searches ({searched}, less itself and its group); "
            "give identities at least two validation images, or use data.validation.split=images"
        )
