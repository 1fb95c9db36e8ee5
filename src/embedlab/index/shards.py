"""Indexes for large galleries, built from the shards `embedlab embed` wrote, one shard at a time:
`build_index_from_shards` (what `embedlab index build --embeddings` runs), and the faiss settings that
`index build` takes for any gallery (cells, probes, PQ codes, training rows, files).

This module needs numpy, faiss and pydantic only (no torch), so that building an index over millions of
rows costs the index's memory and little more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedlab.embeddings.shards import ITEMS_FILE as SHARD_ITEMS_FILE
from embedlab.embeddings.shards import EmbeddingShards
from embedlab.index.gallery import build_faiss_index
from embedlab.index.manifest import (
    FaissRecord,
    IndexManifest,
    ModelRecord,
    PreprocessingRecord,
    RequestedKind,
    SourceRecord,
    choose_kind,
    utc_now,
)
from embedlab.index.store import (
    check_writable,
    write_faiss_files,
    write_index_folder,
    write_manifest_last,
    write_streamed_rows,
    writer_lock,
)
from embedlab.versions import package_versions


@dataclass(frozen=True)
class FaissSettings:
    """The faiss choices of `index build` besides the kind; None leaves them to the gallery's size
    (see `embedlab.retrieval.faiss_index.IndexOptions`)."""

    nlist: int | None = None
    nprobe: int = 16
    pq_m: int | None = None
    train_size: int | None = None
    shards: int = 1

    def applied_to(self, record: FaissRecord) -> FaissRecord:
        return FaissRecord.model_validate(
            {
                **record.model_dump(),
                "ivf_nlist": self.nlist,
                "ivf_nprobe": self.nprobe,
                "pq_m": self.pq_m,
                "train_size": self.train_size,
                "shards": self.shards,
            }
        )


def build_index_from_shards(
    embeddings: str | Path,
    out: str | Path,
    *,
    kind: RequestedKind = "auto",
    faiss: FaissSettings | None = None,
    force: bool = False,
) -> IndexManifest:
    """Write an index folder over the shards `embedlab embed` wrote, holding one shard in memory at a
    time: the cells and codebooks are trained on a sample of rows, the rows are added shard by shard,
    embeddings.npy is filled shard by shard, items.jsonl is copied. Returns the manifest written."""
    out = Path(out)
    check_writable(out, replace=force)
    shards = EmbeddingShards(embeddings)
    n_items, dim = len(shards), shards.dim
    now = utc_now()
    manifest = IndexManifest(
        created_at=now,
        updated_at=now,
        size=n_items,
        versions=package_versions(),
        model=ModelRecord.model_validate(shards.manifest.model),
        preprocessing=PreprocessingRecord.model_validate(shards.manifest.preprocessing),
        faiss=(faiss or FaissSettings()).applied_to(
            FaissRecord(kind=choose_kind(kind, n_items), requested_kind=kind)
        ),
        sources=[SourceRecord(source=shards.manifest.source, items=n_items, added_at=now)],
    )
    faiss_index, manifest.faiss = build_faiss_index(
        manifest.faiss, n_items, dim, rows_of=shards.rows, blocks=lambda: (s.embeddings for s in shards)
    )

    def fill(folder: Path) -> None:
        write_streamed_rows(
            folder, n_items, dim, (shard.embeddings for shard in shards), shards.folder / SHARD_ITEMS_FILE
        )
        write_faiss_files(faiss_index, manifest.faiss, folder)
        write_manifest_last(manifest, folder)

    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):  # an `add` under way finishes first; this index then replaces what it wrote
        write_index_folder(out, fill, replace=force)
    return manifest
