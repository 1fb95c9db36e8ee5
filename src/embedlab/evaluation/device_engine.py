"""Exact evaluation with torch on a device (a GPU; the CPU in the tests): the positives' ranks of each
block of queries, by the numpy engine's rules, for the engine's own metric formulas and averaging.

Per block of queries (sized from the device's free memory, halved on running out of it; see
`embedlab.retrieval.torch_exact`), on the device:
1. the similarities by matrix product in float32, exclusions (own rows, ignore groups) at -inf;
2. each row's threshold: its d-th best similarity, d being the depth the metrics need, derived from
   the block's R exactly as the numpy engine derives it (`RankPlan.depth`); with `map`, the least
   similar non-excluded positive, so that every positive is ranked;
3. the items at least as similar as the threshold, put in rank order by similarity descending, ties
   by gallery index ascending (`ranked_candidates`): a positive's position there is its rank in the
   whole row, 1 + #{j: s_j > s_p} + #{j < p: s_j == s_p}, the numpy kernel's rank;
4. with `mrr`, a row whose positives all rank below the d-th item gets its best positive's rank by
   counting over the whole row, as the kernel does.
Only the padded ranks (rows, M) go back to the host, where `metric_values` turns them into the very
values the numpy engine computes from the same ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from embedlab.evaluation.labels import LabelIndex, positive_counts
from embedlab.evaluation.ranks import RankPlan
from embedlab.retrieval.exclusions import Exclusions
from embedlab.retrieval.torch_exact import (
    Product,
    block_rows,
    iter_retrying_blocks,
    similarity_block,
)
from embedlab.retrieval.torch_topk import kth_best, ranked_candidates, segment_positions

if TYPE_CHECKING:
    from embedlab.evaluation.engine import Rescorer


@dataclass(frozen=True)
class RankedBlock:
    """queries[start:stop]: their R (rows,) int64 and padded positive ranks (rows, M) float64 (+inf pad)."""

    start: int
    stop: int
    n_positives: np.ndarray
    ranks: np.ndarray


def _thresholds(
    similarities: torch.Tensor, positive: torch.Tensor | None, plan: RankPlan, n_positives: np.ndarray
) -> torch.Tensor:
    """Each row's threshold: the similarity its ranked items must reach (see the module's step 2)."""
    if plan.needs_all:
        assert positive is not None
        visible = positive & (similarities > -torch.inf)
        return torch.where(visible, similarities, torch.inf).amin(dim=1)
    return kth_best(similarities, min(plan.depth(n_positives), similarities.shape[1]))


def _first_positive_ranks(similarities: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(rows,) rank of each row's best non-excluded positive over the whole row (rows with one)."""
    visible = positive & (similarities > -torch.inf)
    best = torch.where(visible, similarities, -torch.inf).amax(dim=1, keepdim=True)
    columns = torch.arange(similarities.shape[1], device=similarities.device)
    tied = similarities == best
    first = torch.where(visible & tied, columns, similarities.shape[1]).amin(dim=1, keepdim=True)
    return 1 + (similarities > best).sum(dim=1) + (tied & (columns < first)).sum(dim=1)


def _block_ranks(
    similarities: torch.Tensor,
    query_codes: torch.Tensor,
    gallery_codes: torch.Tensor,
    plan: RankPlan,
    n_positives: np.ndarray,
) -> np.ndarray:
    """Padded positive ranks (rows, M) float64 of one similarity block (rows, Ng), as `block_ranks`."""
    n_rows = similarities.shape[0]
    # The whole (rows, Ng) positive mask only where a rule needs it: map's threshold, mrr's fallback.
    positive = gallery_codes[None, :] == query_codes[:, None] if plan.needs_all or plan.needs_first else None
    candidates = ranked_candidates(similarities, _thresholds(similarities, positive, plan, n_positives))
    is_positive = gallery_codes[candidates.columns] == query_codes[candidates.rows]
    rows = candidates.rows[is_positive]
    slots, found = segment_positions(rows, n_rows)
    width = max(1, int(found.max())) if n_rows else 1
    ranks = torch.full((n_rows, width), torch.inf, dtype=torch.float64, device=similarities.device)
    ranks[rows, slots] = (candidates.positions[is_positive] + 1).to(torch.float64)
    if plan.needs_first:
        assert positive is not None
        counts = torch.from_numpy(n_positives).to(similarities.device)
        missing = torch.nonzero((found == 0) & (counts > 0)).flatten()
        if missing.numel():
            ranks[missing, 0] = _first_positive_ranks(similarities[missing], positive[missing]).to(
                torch.float64
            )
    return ranks.cpu().numpy()


def iter_device_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_codes: np.ndarray,
    labels: LabelIndex,
    exclusions: Exclusions,
    plan: RankPlan,
    device: torch.device,
    *,
    max_memory_bytes: int,
    rescore: Rescorer | None = None,
    product: Product = torch.matmul,
) -> Iterator[RankedBlock]:
    """Yield the R and positive ranks of prepared float32 queries (Nq, D) against a gallery (Ng, D),
    block by block, computed on `device`. query_codes (Nq,): the queries' codes in `labels` (-1: a
    label the gallery lacks). rescore: applied to each block of similarities on the host (the block is
    copied there and back). product: the similarity product (a seam for the tests' injected faults).
    """
    queries_on_device = torch.from_numpy(np.ascontiguousarray(queries)).to(device)
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery)).to(device).T
    codes_on_device = torch.from_numpy(query_codes).to(device)
    gallery_codes = torch.from_numpy(labels.gallery_codes).to(device)
    rows = block_rows(device, queries.shape[0], gallery.shape[0], max_memory_bytes=max_memory_bytes)

    def compute(start: int, stop: int) -> RankedBlock:
        n_positives = positive_counts(query_codes, labels, exclusions, start, stop)
        similarities = similarity_block(queries_on_device, gallery_t, exclusions, start, stop, product)
        if rescore is not None:
            host = similarities.cpu().numpy()
            rescore(host, start, stop)
            similarities = torch.from_numpy(host).to(device)
        ranks = _block_ranks(similarities, codes_on_device[start:stop], gallery_codes, plan, n_positives)
        return RankedBlock(start, stop, n_positives, ranks)

    yield from iter_retrying_blocks(queries.shape[0], rows, compute)
