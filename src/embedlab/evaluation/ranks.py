"""The depth each ranking needs for the requested metrics, and the ranks of a block's positives in it."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from embedlab.evaluation import metrics as M
from embedlab.evaluation.labels import LabelIndex
from embedlab.metric_names import MetricSpec


@dataclass(frozen=True)
class RankPlan:
    """What the requested metrics need from each ranking."""

    cutoff: int
    needs_r: bool
    needs_all: bool
    needs_first: bool

    @classmethod
    def of(cls, specs: Sequence[MetricSpec]) -> RankPlan:
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


def load_ranking_kernel() -> Future[None]:
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


def block_ranks(
    similarities: np.ndarray,
    codes: np.ndarray,
    n_positives: np.ndarray,
    labels: LabelIndex,
    plan: RankPlan,
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


def relevance_ranks(indices: np.ndarray, codes: np.ndarray, labels: LabelIndex) -> np.ndarray:
    """Padded positive ranks (rows, M) read off neighbour lists (rows, d) of gallery indices, -1 for none."""
    neighbour_codes = np.where(indices >= 0, labels.gallery_codes[np.maximum(indices, 0)], -1)
    relevance = (neighbour_codes == codes[:, None]) & (codes[:, None] >= 0)
    return M.positive_ranks_from_relevance(relevance)
