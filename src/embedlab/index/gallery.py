"""A gallery index in memory: its items, their vectors and the faiss index over them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedlab.index.manifest import (
    FaissRecord,
    IndexManifest,
    OpenSetRecord,
    SourceRecord,
    choose_kind,
    utc_now,
)
from embedlab.retrieval.arrays import sample_rows
from embedlab.retrieval.exclusions import make_exclusions
from embedlab.retrieval.faiss_index import (
    ShardedIndexBuilder,
    add_rows,
    empty_index,
    set_search_parameters,
)
from embedlab.retrieval.recall import measure_recall
from embedlab.retrieval.whitening import PCAWhitening

#: Gallery rows searched as queries (each left out of its own results) to measure an approximate
#: index's recall@10 against exact search when it is built.
RECALL_QUERIES = 1000
RECALL_K = 10


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its file (absolute path), its identity, and the CSV's other columns."""

    path: str
    label: str
    extra: dict[str, str] = field(default_factory=dict)


def build_faiss_index(
    record: FaissRecord,
    n_rows: int,
    dim: int,
    rows_of: Callable[[np.ndarray], np.ndarray],
    blocks: Callable[[], Iterator[np.ndarray]],
) -> tuple[Any, FaissRecord]:
    """The faiss index the record describes over a gallery of n_rows unit rows (dim columns), and the
    record with what was chosen (cells, PQ sub-vectors, training rows) and the measured recall@10.

    The gallery is never needed in memory at once: `blocks()` streams its rows in id order (it is read
    twice: to add the rows, and to search exactly for the recall) and `rows_of(ids)` fetches the sampled
    training rows and recall queries. The cells and codebooks are trained once, on a sample; each of
    record.shards shards is a copy of that trained, empty index filled with its own range of rows.
    """
    if n_rows == 0:
        raise ValueError("the gallery is empty; an index needs at least one image")
    kind = record.index_kind
    options = record.options().resolved(kind, n_rows, dim)
    sample = None
    if options.train_size is not None and kind in ("ivf", "ivfpq"):
        sample = rows_of(sample_rows(n_rows, options.train_size, seed=0))
    builder = ShardedIndexBuilder(empty_index(kind, dim, options, sample), n_rows, record.shards)
    del sample  # the training rows are not needed past training
    for block in blocks():
        builder.add(block)
    faiss_index = builder.finish()
    recall = None
    if kind != "exact":
        query_ids = sample_rows(n_rows, min(RECALL_QUERIES, n_rows), seed=1)
        own_rows = make_exclusions(len(query_ids), n_rows, exclude_index=query_ids)
        recall = measure_recall(
            rows_of(query_ids), blocks(), RECALL_K, own_rows, index=faiss_index, index_options=options
        )
    # After the measurement, which searched with efSearch at least RECALL_K + 1.
    configure_search(faiss_index, record)
    resolved = record.model_copy(
        update={
            "ivf_nlist": options.ivf_nlist,
            "pq_m": options.pq_m,
            "train_size": options.train_size,
            "recall": recall,
        }
    )
    return faiss_index, resolved


def configure_search(faiss_index: Any, record: FaissRecord) -> None:
    """Set the search-time parameters of an approximate index from the manifest, once, at load: faiss
    only reads them during searches, so concurrent searches stay safe."""
    # faiss searches at least k candidates whatever efSearch says, so a large k stays exact enough.
    set_search_parameters(faiss_index, nprobe=record.ivf_nprobe, ef_search=record.hnsw_ef_search)


@dataclass
class GalleryIndex:
    """A loaded (or freshly built) index: manifest, items and embeddings in id order, faiss index."""

    manifest: IndexManifest
    items: list[GalleryItem]
    embeddings: np.ndarray
    faiss_index: Any
    # The PCA whitening the vectors went through (manifest.postprocessing.whitening_dim), if any.
    whitening: PCAWhitening | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def create(
        cls,
        manifest: IndexManifest,
        items: list[GalleryItem],
        embeddings: np.ndarray,
        whitening: PCAWhitening | None = None,
    ) -> GalleryIndex:
        """Build the faiss index the manifest's faiss record names over `embeddings` (N, D)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        _check_rows(len(items), embeddings, manifest.vector_dim)
        faiss_index, faiss_record = build_faiss_index(
            manifest.faiss,
            len(embeddings),
            embeddings.shape[1],
            rows_of=lambda ids: embeddings[ids],
            blocks=lambda: iter([embeddings]),
        )
        manifest = manifest.model_copy(update={"size": len(items), "faiss": faiss_record})
        return cls(manifest, list(items), embeddings, faiss_index, whitening)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery items of each query (Nq, D): scores (Nq, k') float32 and ids (Nq, k') int64.

        k' = min(k, gallery size). Scores are cosine similarities, descending. An approximate index may
        find fewer than k' items for a query; those slots hold id -1 and score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embedding_dim:
            raise ValueError(
                f"queries must have shape (N, {self.embedding_dim}) for this index, got {queries.shape}"
            )
        scores, ids = self.faiss_index.search(queries, min(k, len(self)))
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    def extended(
        self, items: list[GalleryItem], embeddings: np.ndarray, source: SourceRecord
    ) -> GalleryIndex:
        """This index with `items` appended (ids continue from len(self)).

        The faiss index grows in place (so use the returned index from then on), except when an "auto"
        index crosses a size at which another kind is chosen: then it is rebuilt over all embeddings.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        _check_rows(len(items), embeddings, self.embedding_dim)
        all_embeddings = np.concatenate([np.asarray(self.embeddings), embeddings])
        all_items = [*self.items, *items]
        kind = choose_kind(self.manifest.faiss.requested_kind, len(all_items))
        manifest = self.manifest.model_copy(
            update={"updated_at": utc_now(), "sources": [*self.manifest.sources, source]}
        )
        if kind != self.manifest.faiss.kind:
            manifest.faiss = manifest.faiss.model_copy(
                update={"kind": kind, "ivf_nlist": None, "pq_m": None, "train_size": None, "recall": None}
            )
            return GalleryIndex.create(manifest, all_items, all_embeddings, self.whitening)
        # faiss adds to its own copy; an IVF index files the new rows under its trained cells, a sharded
        # index puts them in its last shard.
        add_rows(self.faiss_index, embeddings)
        manifest.size = len(all_items)
        return GalleryIndex(manifest, all_items, all_embeddings, self.faiss_index, self.whitening)

    def with_open_set(self, record: OpenSetRecord) -> GalleryIndex:
        manifest = self.manifest.model_copy(update={"open_set": record, "updated_at": utc_now()})
        return GalleryIndex(manifest, self.items, self.embeddings, self.faiss_index, self.whitening)


def _check_rows(n_items: int, embeddings: np.ndarray, dim: int) -> None:
    if embeddings.ndim != 2 or embeddings.shape != (n_items, dim):
        raise ValueError(
            f"embeddings must have shape ({n_items}, {dim}) (one row per item), got {embeddings.shape}"
        )
