"""The METRICS.md ranking on torch tensors (similarity descending, ties by gallery index ascending).

`torch.topk` breaks ties in no documented order, so it only finds each row's k-th best value; the items
at least as similar as a row's threshold (its candidates) are then put in exact rank order by two
stable sorts. Every item that ranks above a candidate is itself a candidate, so a candidate's position
in its row is its rank over the whole row, ties included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RankedCandidates:
    """The candidates of a block of rows, ordered by row and, within a row, by rank.

    rows: (n,) int64 row of each candidate; columns: (n,) int64 its gallery index; positions: (n,) int64
    its 0-based rank in its row; row_counts: (rows,) int64 candidates per row.
    """

    rows: torch.Tensor
    columns: torch.Tensor
    positions: torch.Tensor
    row_counts: torch.Tensor


def kth_best(similarities: torch.Tensor, k: int) -> torch.Tensor:
    """(rows,) the k-th largest value of each row of a (rows, m) block, k <= m (-inf where a row has
    fewer than k items above -inf)."""
    return torch.topk(similarities, k, dim=1, sorted=False).values.amin(dim=1)


def segment_positions(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For row numbers sorted ascending: each entry's 0-based position within its row, and the row counts."""
    counts = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(counts, dim=0) - counts
    return torch.arange(rows.numel(), device=rows.device) - starts[rows], counts


def ranked_candidates(similarities: torch.Tensor, thresholds: torch.Tensor) -> RankedCandidates:
    """The items of each row at least as similar as its threshold, excluded ones (-inf) never, ranked.

    similarities: (rows, m) float32, excluded items at -inf; thresholds: (rows,) float32.
    """
    mask = (similarities >= thresholds[:, None]) & (similarities > -torch.inf)
    rows, columns = mask.nonzero(as_tuple=True)
    # + 0.0 turns -0.0 into 0.0: the two compare equal, and so must tie here as in the numpy rule.
    values = similarities[rows, columns] + 0.0
    # nonzero lists columns ascending within a row, and stable sorts keep that order among equals:
    # by value descending, then by row, gives row, value descending, gallery index ascending.
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, columns = rows[order], columns[order]
    positions, counts = segment_positions(rows, similarities.shape[0])
    return RankedCandidates(rows, columns, positions, counts)


def torch_top_k(similarities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best items of each row of a (rows, m) float32 block with -inf for excluded items, ranked by
    the METRICS.md rule: similarities (rows, k) float32 and indices (rows, k) int64, (-inf, -1) where a
    row has fewer than k non-excluded items (as `embedlab.retrieval.topk.top_k`)."""
    n_rows, n_items = similarities.shape
    device = similarities.device
    out_sims = torch.full((n_rows, k), -torch.inf, dtype=torch.float32, device=device)
    out_ids = torch.full((n_rows, k), -1, dtype=torch.int64, device=device)
    if n_rows == 0 or n_items == 0:
        return out_sims, out_ids
    candidates = ranked_candidates(similarities, kth_best(similarities, min(k, n_items)))
    kept = candidates.positions < k
    rows, columns, slots = candidates.rows[kept], candidates.columns[kept], candidates.positions[kept]
    out_ids[rows, slots] = columns
    out_sims[rows, slots] = similarities[rows, columns]
    return out_sims, out_ids
