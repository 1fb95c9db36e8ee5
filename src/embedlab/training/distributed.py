"""Several training processes on Lightning's DDP strategy: how many there are, which one this is, and
the two collectives the pipeline adds to DDP's gradient averaging.

- `gather_global_batch`: every process scores the loss on the whole global batch (the embeddings of all
  processes, in rank order), as one process would, so pair losses and miners see every pair.
- `gather_rows`: validation embeddings made in slices by each process, put back in item order on
  process 0, with a check that every item arrived exactly once.

Processes come from `embedlab train --devices N` (Lightning starts N - 1 copies of the command with
LOCAL_RANK set) or from torchrun, which sets RANK, LOCAL_WORLD_SIZE and WORLD_SIZE for every process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessLayout:
    """Processes per node and nodes; this process's global rank."""

    devices: int
    num_nodes: int
    rank: int

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def resolve_layout(devices: int | None = None, num_nodes: int | None = None) -> ProcessLayout:
    """The processes of this run: the ones asked for, or else what torchrun put in the environment,
    or else one. The rank is read before Lightning starts, so that only process 0 prepares the run
    folder: RANK (torchrun), else NODE_RANK * devices + LOCAL_RANK (Lightning's launcher)."""
    local_world = _env_int("LOCAL_WORLD_SIZE")
    world = _env_int("WORLD_SIZE")
    if devices is None:
        devices = local_world or 1
    if num_nodes is None:
        num_nodes = world // local_world if world and local_world else 1
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be at least 1, got {devices} and {num_nodes}")
    if world is not None and local_world is not None and world != devices * num_nodes:
        raise ValueError(
            f"torchrun started {world} processes ({local_world} per node), but --devices {devices} "
            f"--num-nodes {num_nodes} make {devices * num_nodes}; pass the same numbers or neither"
        )
    rank = _env_int("RANK")
    if rank is None:
        rank = (_env_int("NODE_RANK") or 0) * devices + (_env_int("LOCAL_RANK") or 0)
    return ProcessLayout(devices=devices, num_nodes=num_nodes, rank=rank)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def gather_global_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings (B * W, D) and labels (B * W,) of every process's slice, in rank order.

    Every process then computes the same loss as one process would on the global batch. Gradients flow
    back only into this process's own rows, scaled by the world size W: DDP averages the gradients of
    the W processes, and the average of W per-slice gradients, each W times its share, is the gradient
    of the global loss. The loss's own parameters (class weights, proxies) see all rows on every process
    and get the full gradient unscaled, which DDP's average leaves as it is. (pytorch-metric-learning's
    DistributedLossWrapper multiplies the whole loss by W instead, which also multiplies the gradient of
    those parameters by W, and takes only its own loss classes.)

    Every process must pass the same batch size B (the training sampler guarantees it).
    """
    world_size = dist.get_world_size()
    gathered_embeddings = [torch.empty_like(embeddings) for _ in range(world_size)]
    gathered_labels = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(gathered_embeddings, embeddings.detach().contiguous())
    dist.all_gather(gathered_labels, labels.contiguous())
    gathered_embeddings[dist.get_rank()] = _ScaleGradient.apply(embeddings, float(world_size))
    return torch.cat(gathered_embeddings), torch.cat(gathered_labels)


def slice_of(n_items: int, rank: int, world_size: int) -> range:
    """Process `rank`'s contiguous share of n_items; shares differ in size by at most one."""
    return range(n_items * rank // world_size, n_items * (rank + 1) // world_size)


def gather_rows(rows: np.ndarray, ids: np.ndarray, n_items: int) -> np.ndarray | None:
    """Rows (n, D) for items `ids` (n,) from every process, as one (n_items, D) array in item order on
    process 0 (None on the others).

    Raises RuntimeError on process 0 unless the processes' ids together name each of the n_items items
    exactly once: a lost or doubled item would silently change every metric.
    """
    parts: list[tuple[np.ndarray, np.ndarray]] | None = (
        [None] * dist.get_world_size() if dist.get_rank() == 0 else None  # type: ignore[list-item]
    )
    dist.gather_object((ids, rows), parts, dst=0)
    if parts is None:
        return None
    all_ids = np.concatenate([part_ids for part_ids, _ in parts]).astype(np.int64)
    known = all_ids[(all_ids >= 0) & (all_ids < n_items)]
    counts = np.bincount(known, minlength=n_items)
    if known.size != all_ids.size or not np.all(counts == 1):
        raise RuntimeError(
            f"the processes returned {all_ids.size} rows for {n_items} items "
            f"({int(np.count_nonzero(counts == 0))} missing, {int(np.count_nonzero(counts > 1))} more "
            f"than once, {all_ids.size - known.size} unknown); each item must come from exactly one process"
        )
    ordered = np.empty((n_items, *rows.shape[1:]), dtype=rows.dtype)
    for part_ids, part_rows in parts:
        ordered[part_ids] = part_rows
    return ordered


def broadcast_from_zero(value: Any) -> Any:
    """Process 0's `value` on every process (any picklable object)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
