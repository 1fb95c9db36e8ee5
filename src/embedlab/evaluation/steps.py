"""Post-processing steps scored one after another: PCA whitening, database-side augmentation, query
expansion and k-reciprocal re-ranking, each row adding one step to the previous ones, so that the user
sees what each step added (and what it cost).

Every step works on a `RetrievalProblem`: the query and gallery embeddings with their labels, groups
and, when queries are gallery items themselves, each query's own gallery index (a set searched in
itself is its own gallery with `exclude_index = arange(N)`). The steps keep that bookkeeping, so an
item never uses what is hidden from it, nor itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from embedlab.evaluation.engine import evaluate_retrieval
from embedlab.evaluation.files import EmbeddingFiles
from embedlab.evaluation.results import RetrievalResult
from embedlab.retrieval.arrays import as_embedding_matrix
from embedlab.retrieval.expansion import database_augmentation, query_expansion
from embedlab.retrieval.reranking import KReciprocalParameters, KReciprocalReranker
from embedlab.retrieval.whitening import PCAWhitening

WhiteningSource = Literal["gallery", "train"]


@dataclass(frozen=True)
class Expansion:
    """k neighbours weighted by similarity^alpha (query expansion or database-side augmentation)."""

    k: int
    alpha: float

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 0:
            raise ValueError(f"expansion needs k >= 1 and alpha >= 0, got k={self.k}, alpha={self.alpha}.")

    def label(self) -> str:
        return f"k={self.k} alpha={self.alpha:g}"


@dataclass(frozen=True)
class Postprocessing:
    """The requested steps, applied in this order: whiten, dba, qe, rerank (None: skipped)."""

    whiten_dim: int | None = None
    whiten_on: WhiteningSource = "gallery"
    dba: Expansion | None = None
    qe: Expansion | None = None
    rerank: KReciprocalParameters | None = None

    @property
    def requested(self) -> bool:
        return any(step is not None for step in (self.whiten_dim, self.dba, self.qe, self.rerank))


def parse_numbers(option: str, text: str, count: int) -> list[float]:
    """ "20,6,0.3" -> [20.0, 6.0, 0.3] for a command-line option taking `count` comma-separated numbers."""
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise ValueError(f"{option} takes {count} comma-separated numbers, got {text!r}.")
    return numbers


def parse_expansion(option: str, text: str) -> Expansion:
    k, alpha = parse_numbers(option, text, 2)
    if k != int(k):
        raise ValueError(f"{option}: K must be a whole number, got {text!r}.")
    return Expansion(int(k), alpha)


def parse_rerank(text: str) -> KReciprocalParameters:
    k1, k2, lambda_value = parse_numbers("--rerank", text, 3)
    if k1 != int(k1) or k2 != int(k2):
        raise ValueError(f"--rerank: K1 and K2 must be whole numbers, got {text!r}.")
    return KReciprocalParameters(int(k1), int(k2), lambda_value)


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

    def exclusions(self) -> dict[str, Any]:
        """The keyword arguments that hide from each query what evaluation hides from it."""
        return {
            "exclude_index": self.exclude_index,
            "query_groups": self.query_groups,
            "gallery_groups": self.gallery_groups,
        }

    def score(self, metrics: Sequence[str], rescore: Any = None) -> RetrievalResult:
        if self.gallery is self.queries:
            # The set searched in itself, as a plain evaluation does it (the same float rounding).
            return evaluate_retrieval(
                self.queries,
                self.query_labels,
                metrics=list(metrics),
                query_groups=self.query_groups,
                rescore=rescore,
            )
        return evaluate_retrieval(
            self.queries,
            self.query_labels,
            self.gallery,
            self.gallery_labels,
            metrics=list(metrics),
            rescore=rescore,
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
) -> StepResult:
    began = time.perf_counter()
    result = problem.score(metrics, rescore)
    return StepResult(step, result, step_seconds, time.perf_counter() - began)


def _timed(work: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    value = work()
    return value, time.perf_counter() - began


def postprocessing_rows(
    problem: RetrievalProblem,
    steps: Postprocessing,
    metrics: Sequence[str],
    *,
    train_embeddings: Callable[[], np.ndarray] | None = None,
) -> list[StepResult]:
    """A row per requested step, each applied on top of the previous ones (not the baseline row).

    train_embeddings: computes the training embeddings when whitening is learned on them.
    """
    rows: list[StepResult] = []
    if steps.whiten_dim is not None:
        if steps.whiten_on == "train":
            if train_embeddings is None:
                raise ValueError(
                    "whitening on training embeddings needs a run folder; use --whiten-on gallery."
                )
            source, embed_seconds = _timed(train_embeddings)
        else:
            source, embed_seconds = problem.gallery, 0.0
        dim = steps.whiten_dim

        def whiten() -> RetrievalProblem:
            whitening = PCAWhitening.fit(source, dim)
            queries = whitening.transform(problem.queries)
            in_itself = problem.gallery is problem.queries
            gallery = queries if in_itself else whitening.transform(problem.gallery)
            return replace(problem, queries=queries, gallery=gallery)

        problem, seconds = _timed(whiten)
        rows.append(
            score_step(f"whiten {dim} on {steps.whiten_on}", problem, metrics, seconds + embed_seconds)
        )
    if steps.dba is not None:
        dba = steps.dba
        augmented, seconds = _timed(
            lambda: database_augmentation(problem.gallery, dba.k, dba.alpha, groups=problem.gallery_groups)
        )
        problem = replace(problem, gallery=augmented)
        rows.append(score_step(f"dba {dba.label()}", problem, metrics, seconds))
    if steps.qe is not None:
        qe = steps.qe
        expanded, seconds = _timed(
            lambda: query_expansion(problem.queries, problem.gallery, qe.k, qe.alpha, **problem.exclusions())
        )
        problem = replace(problem, queries=expanded)
        rows.append(score_step(f"qe {qe.label()}", problem, metrics, seconds))
    if steps.rerank is not None:
        parameters = steps.rerank
        reranker, seconds = _timed(
            lambda: KReciprocalReranker(problem.queries, problem.gallery, parameters, **problem.exclusions())
        )
        label = f"rerank k1={parameters.k1} k2={parameters.k2} lambda={parameters.lambda_value:g}"
        rows.append(score_step(label, problem, metrics, seconds, rescore=reranker))
    return rows
