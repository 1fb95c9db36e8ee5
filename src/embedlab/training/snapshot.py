"""The retrieval snapshot: what a report needs from a run, saved once at the end of training.

A report shows retrieval grids (each query's top-k results) and a map of the query embeddings. Making
them again later would mean embedding the whole gallery again (60,000 images in the demo), so the
validation callback keeps what they need after the last epoch, in RUN_DIR/retrieval.npz:

  query_index            (Nq,) int64     row of each scored query in the validation query set
  query_labels           (Nq,) int64
  query_embeddings       (Nq, D) float16 the final embeddings (float16 halves the file; a map needs no more)
  n_positives            (Nq,) int64     gallery items of the query's label it may see (R of METRICS.md)
  neighbour_index        (Nq, k) int64   row of each result in the gallery set; -1 where none is left
  neighbour_labels       (Nq, k) int64
  neighbour_similarity   (Nq, k) float32 cosine similarity; -inf where none is left
  gallery_is_query       ()  bool        the query set was searched in itself (no separate gallery)
  epoch                  ()  int64       epochs trained by the model that made it (metrics.csv's epoch)

The neighbours follow the validation protocol of `score_validation`: a query never sees itself, nor an
item of its ignore group, and a CSV's `is_query` / `is_gallery` roles pick who searches and who is found.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedlab.atomic import atomic_write
from embedlab.retrieval.search import search

if TYPE_CHECKING:
    from embedlab.data.images import LabelledImages

#: Results kept per query: a grid shows fewer, and 10 keeps the file small for large query sets.
SNAPSHOT_K = 10


@dataclass(frozen=True)
class RetrievalSnapshot:
    """The arrays of RUN_DIR/retrieval.npz (see the module docstring for shapes and meaning)."""

    query_index: np.ndarray
    query_labels: np.ndarray
    query_embeddings: np.ndarray
    n_positives: np.ndarray
    neighbour_index: np.ndarray
    neighbour_labels: np.ndarray
    neighbour_similarity: np.ndarray
    gallery_is_query: bool
    epoch: int

    @property
    def correct(self) -> np.ndarray:
        """(Nq, k) bool: the result exists and shares the query's label."""
        return (self.neighbour_index >= 0) & (self.neighbour_labels == self.query_labels[:, None])


def _numpy(values: object) -> np.ndarray | None:
    return None if values is None else np.asarray(values)


def _count_matches(items: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(M,) how many rows of `items` (N, C) equal each row of `keys` (M, C)."""
    codes = np.unique(np.concatenate([items, keys]), axis=0, return_inverse=True)[1].reshape(-1)
    tally = np.bincount(codes[: len(items)], minlength=int(codes.max()) + 1)
    return tally[codes[len(items) :]]


def positive_counts(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_groups: np.ndarray | None,
    gallery_groups: np.ndarray | None,
    hides_self: np.ndarray,
) -> np.ndarray:
    """(Nq,) how many gallery items share each query's label and are not hidden from it.

    Hidden: the items of the query's ignore group when groups are given (the query itself is one of
    them when the set searches itself), else the query's own gallery row where `hides_self`.
    """
    counts = _count_matches(gallery_labels[:, None], query_labels[:, None])
    if query_groups is None or gallery_groups is None:
        return counts - hides_self.astype(np.int64)
    hidden = _count_matches(
        np.stack([gallery_labels, gallery_groups], axis=1), np.stack([query_labels, query_groups], axis=1)
    )
    return counts - hidden


def take_snapshot(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray | None,
    query: LabelledImages,
    gallery: LabelledImages | None,
    epoch: int,
    k: int = SNAPSHOT_K,
) -> RetrievalSnapshot:
    """Top-k neighbours of every scored query, by the protocol of `score_validation`.

    query_embeddings (Nq_all, D) of `query`; gallery_embeddings (Ng, D) of `gallery`, or None when the
    query set searches itself.
    """
    labels = query.labels.numpy()
    groups = _numpy(query.groups)
    if gallery is None:
        everyone = np.ones(len(query), dtype=bool)
        rows = np.flatnonzero(everyone if query.is_query is None else query.is_query.numpy())
        cols = np.flatnonzero(everyone if query.is_gallery is None else query.is_gallery.numpy())
        candidates = query_embeddings[cols]
        gallery_labels = labels[cols]
        gallery_groups = None if groups is None else groups[cols]
        # Where an item is both a query and a gallery item, hide it from itself by its gallery row.
        gallery_row = np.full(len(query), -1, dtype=np.int64)
        gallery_row[cols] = np.arange(cols.size)
        exclude_index: np.ndarray | None = gallery_row[rows]
    else:
        assert gallery_embeddings is not None
        rows, cols = np.arange(len(query)), np.arange(len(gallery))
        candidates = gallery_embeddings
        gallery_labels = gallery.labels.numpy()
        gallery_groups = _numpy(gallery.groups)
        exclude_index = None
    query_groups = None if groups is None or gallery_groups is None else groups[rows]
    if query_groups is None:
        gallery_groups = None
    similarity, index = search(
        query_embeddings[rows],
        candidates,
        k,
        exclude_index=exclude_index,
        query_groups=query_groups,
        gallery_groups=gallery_groups,
    )
    found = index >= 0
    hides_self = np.zeros(rows.size, dtype=bool) if exclude_index is None else exclude_index >= 0
    return RetrievalSnapshot(
        query_index=rows.astype(np.int64),
        query_labels=labels[rows].astype(np.int64),
        query_embeddings=query_embeddings[rows].astype(np.float16),
        n_positives=positive_counts(labels[rows], gallery_labels, query_groups, gallery_groups, hides_self),
        neighbour_index=np.where(found, cols[np.maximum(index, 0)], -1).astype(np.int64),
        neighbour_labels=np.where(found, gallery_labels[np.maximum(index, 0)], -1).astype(np.int64),
        neighbour_similarity=similarity.astype(np.float32),
        gallery_is_query=gallery is None,
        epoch=epoch,
    )


def write_snapshot(path: Path, snapshot: RetrievalSnapshot) -> None:
    """Write the snapshot to `path` (.npz, uncompressed: fast to write) atomically."""
    arrays = {f.name: np.asarray(getattr(snapshot, f.name)) for f in fields(snapshot)}
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def read_snapshot(path: Path) -> RetrievalSnapshot:
    """Load RUN_DIR/retrieval.npz (plain arrays only: no pickled objects are allowed)."""
    with np.load(path, allow_pickle=False) as arrays:
        values = {f.name: arrays[f.name] for f in fields(RetrievalSnapshot)}
    values["gallery_is_query"] = bool(values["gallery_is_query"])
    values["epoch"] = int(values["epoch"])
    return RetrievalSnapshot(**values)
