"""Post-processing steps scored one after another: PCA whitening, database-side augmentation, query
expansion and k-reciprocal re-ranking (the steps of `embedlab.retrieval.postprocessing`, applied by its
`apply_step`), each row adding one step to the previous ones, so that the user sees what each step added
(and what it cost).

Every step works on the `sides()` of a `RetrievalProblem`: the query and gallery embeddings with
their groups and, when queries are gallery items themselves, each query's own gallery index (a set
searched in itself is its own gallery with `exclude_index = arange(N)`). The steps keep that
bookkeeping, so an item never uses what is hidden from it, nor itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from embedlab.evaluation.engine import evaluate_retrieval
from embedlab.evaluation.files import EmbeddingFiles
from embedlab.evaluation.labels import LabelIndex, positive_counts
from embedlab.evaluation.results import RetrievalResult
from embedlab.retrieval.arrays import as_embedding_matrix
from embedlab.retrieval.exclusions import make_exclusions
from embedlab.retrieval.postprocessing import Sides, StepConfig, apply_step, build_steps


@dataclass(frozen=True)
class RetrievalProblem:
    """What is scored: queries against a gallery; exclude_index (Nq,) is each query's own gallery row
    (-1 for none), or None when no query is a gallery item. A gallery that is the queries' very array
    is the set searched in itself."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray
    exclude_index: np.ndarray | None = None
    query_groups: np.ndarray | None = None
    gallery_groups: np.ndarray | None = None

    @classmethod
    def from_files(cls, files: EmbeddingFiles) -> RetrievalProblem:
        """The problem of `embedlab evaluate`'s .npy files (see `load_embedding_files`)."""
        return cls.build(
            files.queries,
            files.query_labels,
            files.gallery,
            files.gallery_labels,
            query_groups=files.query_groups,
            gallery_groups=files.gallery_groups,
        )

    @classmethod
    def build(
        cls,
        queries: Any,
        query_labels: Any,
        gallery: Any = None,
        gallery_labels: Any = None,
        *,
        query_groups: Any = None,
        gallery_groups: Any = None,
        query_rows: np.ndarray | None = None,
        gallery_rows: np.ndarray | None = None,
    ) -> RetrievalProblem:
        """A problem from evaluate_retrieval-style arguments (gallery None: the queries searched in
        themselves); query_rows / gallery_rows: with gallery None, the items that are queries and those
        that are gallery items (a CSV's is_query / is_gallery roles)."""
        # Not normalised here: the engine normalises, and normalising twice moves float32 values by an ulp,
        # which can swap near-tied neighbours against a plain evaluation.
        q = as_embedding_matrix(queries, "query embeddings")
        qlabels = np.asarray(query_labels)
        qgroups = None if query_groups is None else np.asarray(query_groups)
        if gallery is not None:
            g = as_embedding_matrix(gallery, "gallery embeddings")
            ggroups = None if gallery_groups is None else np.asarray(gallery_groups)
            return cls(q, qlabels, g, np.asarray(gallery_labels), None, qgroups, ggroups)
        everyone = np.arange(q.shape[0])
        if query_rows is None and gallery_rows is None:
            return cls(q, qlabels, q, qlabels, everyone, qgroups, qgroups)
        qrows = everyone if query_rows is None else query_rows
        grows = everyone if gallery_rows is None else gallery_rows
        position = np.full(q.shape[0] + 1, -1, dtype=np.int64)  # the last slot keeps -1 for "none"
        position[grows] = np.arange(grows.size)
        return cls(
            queries=q[qrows],
            query_labels=qlabels[qrows],
            gallery=q[grows],
            gallery_labels=qlabels[grows],
            exclude_index=position[qrows],
            query_groups=None if qgroups is None else qgroups[qrows],
            gallery_groups=None if qgroups is None else qgroups[grows],
        )

    def sides(self) -> Sides:
        """What the post-processing steps see of this problem (its vectors and exclusions)."""
        return Sides(self.queries, self.gallery, self.exclude_index, self.query_groups, self.gallery_groups)

    def exclusions(self) -> dict[str, Any]:
        """The keyword arguments that hide from each query what evaluation hides from it."""
        return {
            "exclude_index": self.exclude_index,
            "query_groups": self.query_groups,
            "gallery_groups": self.gallery_groups,
        }

    def positive_counts(self) -> np.ndarray:
        """R of each query (Nq,): the gallery items of its label, less those hidden from it."""
        labels = LabelIndex.build(np.asarray(self.gallery_labels))
        codes = labels.codes_of(np.asarray(self.query_labels))
        exclusions = make_exclusions(len(self.queries), len(self.gallery), **self.exclusions())
        return positive_counts(codes, labels, exclusions, 0, len(self.queries))

    def score(self, metrics: Sequence[str], rescore: Any = None, device: Any = "auto") -> RetrievalResult:
        """The metrics of this problem (device: as for `evaluate_retrieval`)."""
        if self.gallery is self.queries:
            # The set searched in itself, as a plain evaluation does it (the same float rounding).
            return evaluate_retrieval(
                self.queries,
                self.query_labels,
                metrics=list(metrics),
                query_groups=self.query_groups,
                rescore=rescore,
                device=device,
            )
        return evaluate_retrieval(
            self.queries,
            self.query_labels,
            self.gallery,
            self.gallery_labels,
            metrics=list(metrics),
            rescore=rescore,
            device=device,
            **self.exclusions(),
        )


@dataclass(frozen=True)
class StepResult:
    """One row: the steps so far, their metrics, the step's own time (embedding, fitting, expanding,
    building the re-ranking graph) and the time of scoring (which includes the re-ranking itself)."""

    step: str
    result: RetrievalResult
    step_seconds: float
    scoring_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            **self.result.to_dict(),
            "step_seconds": round(self.step_seconds, 3),
            "scoring_seconds": round(self.scoring_seconds, 3),
        }


def score_step(
    step: str,
    problem: RetrievalProblem,
    metrics: Sequence[str],
    step_seconds: float,
    rescore: Any = None,
    device: Any = "auto",
) -> StepResult:
    began = time.perf_counter()
    result = problem.score(metrics, rescore, device)
    return StepResult(step, result, step_seconds, time.perf_counter() - began)


def postprocessing_rows(
    problem: RetrievalProblem,
    steps: Sequence[StepConfig],
    metrics: Sequence[str],
    *,
    train_embeddings: Callable[[], np.ndarray] | None = None,
    device: Any = "auto",
) -> list[StepResult]:
    """A row per step config, in order, each applied on top of the previous ones (not the baseline row).

    train_embeddings: computes the training embeddings when whitening is learned on them. device: where
    each row is scored (as for `evaluate_retrieval`; the steps themselves run on the CPU).
    """
    rows: list[StepResult] = []
    for step in build_steps(steps):
        began = time.perf_counter()
        sides, rescore = apply_step(step, problem.sides(), train_embeddings)
        seconds = time.perf_counter() - began
        problem = replace(problem, queries=sides.queries, gallery=sides.gallery)
        rows.append(score_step(step.label(), problem, metrics, seconds, rescore=rescore, device=device))
    return rows
