"""Post-processing steps after the embedding model: one protocol, one registry, one `{name, args}` form.

A step acts on both sides of a search. On the gallery side, when an index or an evaluation problem is
prepared, it may learn something (`fit`: PCA whitening), map every vector (`transform`: the whitening,
applied to the queries too so both sides meet in one space) and change the gallery (`augment_gallery`:
database-side augmentation). On the query side, at search time, it maps the query (`transform`) and may
expand it with its neighbours in the gallery (`expand_queries`: query expansion). A re-ranking step
changes the scores instead (`rescorer`, which `evaluate_retrieval(..., rescore=...)` takes).

    whiten  {"dim": D, "fit_on": "gallery" | "train"}   retrieval/whitening.py
    dba     {"k": K, "alpha": A}                        retrieval/expansion.py
    qe      {"k": K, "alpha": A}                        retrieval/expansion.py
    rerank  {"k1": K1, "k2": K2, "lambda_value": L}     retrieval/reranking.py

The math lives in those modules; the classes here hold the parameters (validated once, in their
constructors) and call it. `apply_step` is the one composition of the sides used by evaluation,
`prepare_gallery` the one used when an index is built, `transform_queries` and `expand_queries` the ones
used at search time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedlab.registry import Registry
from embedlab.retrieval.arrays import l2_normalize
from embedlab.retrieval.expansion import (
    check_expansion,
    database_augmentation,
    query_expansion,
    weighted_neighbour_sum,
)
from embedlab.retrieval.reranking import KReciprocalParameters, KReciprocalReranker
from embedlab.retrieval.whitening import PCAWhitening

WhiteningSource = Literal["gallery", "train"]
#: (queries (Nq, D), k) -> scores (Nq, k') and gallery ids (Nq, k'), id -1 for a missing neighbour.
NeighbourSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
#: Re-scores a block of similarities (queries start:stop against the whole gallery) in place.
Rescorer = Callable[[np.ndarray, int, int], None]


class StepConfig(BaseModel):
    """One step as configured, stored and printed: its registry name and its constructor's arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Sides:
    """The two sides a step works on: queries (Nq, D) searched in a gallery (Ng, D).

    exclude_index (Nq,): each query's own gallery row (-1 for none); query_groups (Nq,) / gallery_groups
    (Ng,): ignore-group ids; what they hide from a query it never uses. A gallery that is the queries'
    very array is the set searched in itself. search: the index's neighbour search at serving time
    (None: exact search with the exclusions above).
    """

    queries: np.ndarray
    gallery: np.ndarray
    exclude_index: np.ndarray | None = None
    query_groups: np.ndarray | None = None
    gallery_groups: np.ndarray | None = None
    search: NeighbourSearch | None = None

    @property
    def in_itself(self) -> bool:
        return self.gallery is self.queries

    def exclusions(self) -> dict[str, Any]:
        return {
            "exclude_index": self.exclude_index,
            "query_groups": self.query_groups,
            "gallery_groups": self.gallery_groups,
        }


@runtime_checkable
class PostprocessingStep(Protocol):
    """What every post-processing step answers (see the module docstring); `Step` gives the defaults."""

    name: ClassVar[str]

    def config(self) -> StepConfig:
        """The `{name, args}` form that builds this step again."""
        ...

    def label(self) -> str:
        """Its name and parameters as a row of `embedlab evaluate` prints them."""
        ...

    def fit(self, sides: Sides, train_embeddings: Callable[[], np.ndarray] | None = None) -> None:
        """Gallery side: learn what the step needs (train_embeddings computes a run's training set)."""
        ...

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Both sides: the map of the vector space (N, D) -> (N, D'); the same array when it has none."""
        ...

    def augment_gallery(self, sides: Sides) -> np.ndarray:
        """Gallery side: the gallery (Ng, D) this step leaves (the same array when it changes nothing)."""
        ...

    def expand_queries(self, sides: Sides) -> np.ndarray:
        """Query side: the queries (Nq, D) this step leaves (the same array when it changes nothing)."""
        ...

    def rescorer(self, sides: Sides) -> Rescorer | None:
        """Scoring: what re-scores the similarities of these sides, None for a step that does not."""
        ...


class Step:
    """Defaults of `PostprocessingStep`: a step that changes nothing where it does not say otherwise."""

    name: ClassVar[str]

    def config(self) -> StepConfig:
        raise NotImplementedError

    def label(self) -> str:
        raise NotImplementedError

    def fit(self, sides: Sides, train_embeddings: Callable[[], np.ndarray] | None = None) -> None:
        return None

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        return vectors

    def augment_gallery(self, sides: Sides) -> np.ndarray:
        return sides.gallery

    def expand_queries(self, sides: Sides) -> np.ndarray:
        return sides.queries

    def rescorer(self, sides: Sides) -> Rescorer | None:
        return None


STEPS: Registry[Step] = Registry("post-processing step")


def _whole_number(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@STEPS.register(name="whiten")
class Whiten(Step):
    """PCA whitening to `dim` dimensions (see `embedlab.retrieval.whitening`), learned without labels on
    the gallery or on the run's training embeddings; `whitening` holds it once fitted (or loaded)."""

    name = "whiten"

    def __init__(self, dim: int, fit_on: WhiteningSource = "gallery") -> None:
        if not _whole_number(dim) or dim < 1:
            raise ValueError(f"the whitening dimension must be a whole number >= 1, got {dim!r}.")
        if fit_on not in ("gallery", "train"):
            raise ValueError(f"whitening is learned on gallery or train, got {fit_on!r}.")
        self.dim = int(dim)
        self.fit_on: WhiteningSource = fit_on
        self.whitening: PCAWhitening | None = None

    def config(self) -> StepConfig:
        return StepConfig(name=self.name, args={"dim": self.dim, "fit_on": self.fit_on})

    def label(self) -> str:
        return f"whiten {self.dim} on {self.fit_on}"

    def fit(self, sides: Sides, train_embeddings: Callable[[], np.ndarray] | None = None) -> None:
        if self.fit_on == "train":
            if train_embeddings is None:
                raise ValueError(
                    "whitening on training embeddings needs a run folder; use --whiten-on gallery."
                )
            source = train_embeddings()
        else:
            source = sides.gallery
        self.whitening = PCAWhitening.fit(source, self.dim)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        if self.whitening is None:
            raise ValueError("the whitening step has not been fitted (nor loaded from whitening.npz).")
        return self.whitening.transform(vectors)


class _Expansion(Step):
    def __init__(self, k: int, alpha: float) -> None:
        check_expansion(k, alpha)
        self.k = int(k)
        self.alpha = float(alpha)

    def config(self) -> StepConfig:
        return StepConfig(name=self.name, args={"k": self.k, "alpha": self.alpha})

    def label(self) -> str:
        return f"{self.name} k={self.k} alpha={self.alpha:g}"


@STEPS.register(name="dba")
class DatabaseAugmentation(_Expansion):
    """alpha-DBA: each gallery item expanded with its k nearest other gallery items (retrieval.expansion)."""

    name = "dba"

    def augment_gallery(self, sides: Sides) -> np.ndarray:
        return database_augmentation(sides.gallery, self.k, self.alpha, groups=sides.gallery_groups)


@STEPS.register(name="qe")
class QueryExpansion(_Expansion):
    """alpha-QE: each query expanded with its k nearest gallery items (retrieval.expansion), found by
    exact search with the sides' exclusions, or by the index's own search at serving time."""

    name = "qe"

    def expand_queries(self, sides: Sides) -> np.ndarray:
        if sides.search is None:
            return query_expansion(sides.queries, sides.gallery, self.k, self.alpha, **sides.exclusions())
        if len(sides.queries) == 0:
            return sides.queries
        scores, ids = sides.search(sides.queries, self.k)
        return weighted_neighbour_sum(l2_normalize(sides.queries), sides.gallery, scores, ids, self.alpha)


@STEPS.register(name="rerank")
class KReciprocalRerank(Step):
    """k-reciprocal re-ranking (retrieval.reranking): k1, k2 and the original distance's weight."""

    name = "rerank"

    def __init__(self, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> None:
        if not (_whole_number(k1) and _whole_number(k2)):
            raise ValueError(f"k1 and k2 must be whole numbers, got k1={k1!r}, k2={k2!r}.")
        self.parameters = KReciprocalParameters(int(k1), int(k2), float(lambda_value))

    def config(self) -> StepConfig:
        p = self.parameters
        return StepConfig(name=self.name, args={"k1": p.k1, "k2": p.k2, "lambda_value": p.lambda_value})

    def label(self) -> str:
        p = self.parameters
        return f"rerank k1={p.k1} k2={p.k2} lambda={p.lambda_value:g}"

    def rescorer(self, sides: Sides) -> Rescorer | None:
        return KReciprocalReranker(sides.queries, sides.gallery, self.parameters, **sides.exclusions())


def build_step(config: StepConfig | dict[str, Any]) -> Step:
    """The step a `{name, args}` config names; unknown names and arguments are errors that list the valid
    ones, bad values are errors of the step's constructor."""
    config = StepConfig.model_validate(config)
    return STEPS.build(config.name, **config.args)


def build_steps(
    configs: Sequence[StepConfig | dict[str, Any]], whitening: PCAWhitening | None = None
) -> list[Step]:
    """The steps of a list of configs, in order; whitening: the fitted whitening of its whiten step (an
    index's whitening.npz)."""
    steps = [build_step(config) for config in configs]
    for step in steps:
        if isinstance(step, Whiten):
            step.whitening = whitening
    return steps


def apply_step(
    step: Step, sides: Sides, train_embeddings: Callable[[], np.ndarray] | None = None
) -> tuple[Sides, Rescorer | None]:
    """Both sides of one step with all the queries at hand (evaluation): fitted, both sides mapped (a set
    searched in itself stays one array), the gallery augmented, then the queries expanded against it; and
    the step's rescorer of the result."""
    step.fit(sides, train_embeddings)
    queries = step.transform(sides.queries)
    gallery = queries if sides.in_itself else step.transform(sides.gallery)
    sides = replace(sides, queries=queries, gallery=gallery)
    sides = replace(sides, gallery=step.augment_gallery(sides))
    sides = replace(sides, queries=step.expand_queries(sides))
    return sides, step.rescorer(sides)


def prepare_gallery(steps: Sequence[Step], gallery: np.ndarray) -> np.ndarray:
    """The gallery side of the steps, in order, when an index is built: each fitted on the gallery so far,
    which it maps and augments."""
    for step in steps:
        sides = Sides(queries=gallery[:0], gallery=gallery)
        step.fit(sides)
        gallery = step.augment_gallery(replace(sides, gallery=step.transform(gallery)))
    return gallery


def transform_queries(steps: Sequence[Step], queries: np.ndarray) -> np.ndarray:
    """Query side at search time, first part: the steps' maps of the space, in order (the vectors an
    index stores are in the space they lead to)."""
    for step in steps:
        queries = step.transform(queries)
    return queries


def expand_queries(
    steps: Sequence[Step], queries: np.ndarray, gallery: np.ndarray, search: NeighbourSearch
) -> np.ndarray:
    """Query side at search time, second part: the steps' query expansions, in order, with the index's
    stored gallery (Ng, D) and its neighbour search."""
    for step in steps:
        queries = step.expand_queries(Sides(queries=queries, gallery=gallery, search=search))
    return queries


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


def _checked(option: str, config: StepConfig) -> StepConfig:
    try:
        build_step(config)
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    return config


def parse_expansion(option: str, name: Literal["dba", "qe"], text: str) -> StepConfig:
    """ "K,ALPHA" of --dba or --qe -> the step's config (errors name the option)."""
    k, alpha = parse_numbers(option, text, 2)
    if k != int(k):
        raise ValueError(f"{option}: K must be a whole number, got {text!r}.")
    return _checked(option, StepConfig(name=name, args={"k": int(k), "alpha": alpha}))


def parse_rerank(text: str) -> StepConfig:
    """ "K1,K2,LAMBDA" of --rerank -> the rerank step's config (errors name the option)."""
    k1, k2, lambda_value = parse_numbers("--rerank", text, 3)
    if k1 != int(k1) or k2 != int(k2):
        raise ValueError(f"--rerank: K1 and K2 must be whole numbers, got {text!r}.")
    args = {"k1": int(k1), "k2": int(k2), "lambda_value": lambda_value}
    return _checked("--rerank", StepConfig(name="rerank", args=args))


def steps_from_options(
    *,
    whiten: int | None = None,
    whiten_on: str = "gallery",
    dba: str | None = None,
    qe: str | None = None,
    rerank: str | None = None,
) -> list[StepConfig]:
    """The command line's --whiten/--whiten-on, --dba, --qe and --rerank as step configs, in the order
    they always run: whiten, dba, qe, rerank."""
    if whiten_on not in ("gallery", "train"):
        raise ValueError(f"--whiten-on must be gallery or train, got {whiten_on!r}")
    configs = []
    if whiten is not None:
        configs.append(
            _checked("--whiten", StepConfig(name="whiten", args={"dim": whiten, "fit_on": whiten_on}))
        )
    if dba is not None:
        configs.append(parse_expansion("--dba", "dba", dba))
    if qe is not None:
        configs.append(parse_expansion("--qe", "qe", qe))
    if rerank is not None:
        configs.append(parse_rerank(rerank))
    return configs
