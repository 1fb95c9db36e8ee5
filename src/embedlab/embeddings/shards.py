"""Embeddings on disk in shards: what `embedlab embed` writes, and what the index builder and the
evaluation read one shard at a time, so that no reader holds the whole collection in memory.

OUT/
  spec.json           what is embedded (`ShardSpec`): the model that embeds (run folder, checkpoint, its
                      sha256, embedding size), its preprocessing, the source, the number of items, the
                      shard size and the label names; written first
  items.jsonl         one item per line in id order: {"path", "label", "extra": {CSV columns}}
  shards/shard-000000.npz, ...
                      shard k holds the items with ids [k * shard_size, (k + 1) * shard_size):
                      ids (n,) int64, labels (n,) int64 codes into the label names, embeddings (n, D)
                      float32; each shard is one file, written atomically
  manifest.json       the spec and the list of shards, written last, once every shard is on disk: a
                      folder without it is unfinished and cannot be opened

A writer killed mid-shard leaves the shards written before whole (and a temporary file that the next
run deletes); `embed --resume` embeds only the shards that are missing.

This module needs numpy and pydantic only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedlab.atomic import atomic_write, atomic_write_text

SPEC_FILE = "spec.json"
ITEMS_FILE = "items.jsonl"
SHARD_DIR = "shards"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ShardSpec(BaseModel):
    """What a shard folder holds, fixed before the first shard is written."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    model: dict[str, Any] = Field(description="the embedding model (an index manifest's model record)")
    preprocessing: dict[str, Any] = Field(description="how files become model input (index manifest's)")
    source: str = Field(description="the folder or CSV the items come from")
    n_items: int = Field(ge=0)
    shard_size: int = Field(gt=0)
    embedding_dim: int = Field(gt=0)
    label_names: list[str]

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    def ids_of(self, shard: int) -> range:
        """The item ids of shard `shard`."""
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_items))


class ShardRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    start: int = Field(ge=0)
    count: int = Field(ge=0)


class ShardManifest(ShardSpec):
    shards: list[ShardRecord]
    completed_at: str


@dataclass(frozen=True)
class Shard:
    """One shard's rows: ids (n,) int64, labels (n,) int64, embeddings (n, D) float32."""

    ids: np.ndarray
    labels: np.ndarray
    embeddings: np.ndarray


def shard_path(folder: Path, shard: int) -> Path:
    return folder / SHARD_DIR / f"shard-{shard:06d}.npz"


def write_shard(folder: Path, shard: int, rows: Shard) -> None:
    """Write one shard as a single file, atomically (a kill leaves no torn shard)."""

    def save(stream: Any) -> None:
        np.savez(
            stream,
            ids=np.ascontiguousarray(rows.ids, dtype=np.int64),
            labels=np.ascontiguousarray(rows.labels, dtype=np.int64),
            embeddings=np.ascontiguousarray(rows.embeddings, dtype=np.float32),
        )

    atomic_write(shard_path(folder, shard), save)


def read_shard(path: Path) -> Shard:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Shard(ids=data["ids"], labels=data["labels"], embeddings=data["embeddings"])
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"shard {path} is not readable ({error}); embed it again") from None


def _stored_shape(data: Any, key: str) -> tuple[int, ...]:
    """The shape of array `key` of an open .npz file, read from its header alone."""
    with data.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(member)
    return tuple(shape)


def shard_is_complete(folder: Path, spec: ShardSpec, shard: int) -> bool:
    """Whether shard `shard` is on disk and holds exactly its ids at the spec's embedding size (its
    ids and the embeddings' header are read, not the embeddings: a shard is written whole or not at
    all)."""
    path = shard_path(folder, shard)
    if not path.is_file():
        return False
    expected = spec.ids_of(shard)
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = data["ids"]
            shape = _stored_shape(data, "embeddings")
    except (OSError, ValueError, KeyError):
        return False
    return shape == (len(expected), spec.embedding_dim) and bool(
        np.array_equal(ids, np.arange(expected.start, expected.stop))
    )


def write_items(folder: Path, items: Iterable[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(item) + "\n" for item in items)
    atomic_write_text(folder / ITEMS_FILE, lines)


def write_spec(folder: Path, spec: ShardSpec) -> None:
    atomic_write_text(folder / SPEC_FILE, spec.model_dump_json(indent=2) + "\n")


def read_spec(folder: Path) -> ShardSpec | None:
    path = folder / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return ShardSpec.model_validate_json(path.read_text())
    except ValidationError as error:
        raise ValueError(f"{path} is not a valid shard spec: {error}") from None


def write_manifest(folder: Path, spec: ShardSpec) -> ShardManifest:
    """Record the finished folder; raises ValueError naming the shards that are missing or torn."""
    missing = [k for k in range(spec.n_shards) if not shard_is_complete(folder, spec, k)]
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} of {spec.n_shards} shards are missing or incomplete "
            f"(first: {shard_path(folder, missing[0]).name}); run `embedlab embed` again with --resume"
        )
    manifest = ShardManifest(
        **spec.model_dump(),
        shards=[
            ShardRecord(
                file=str(shard_path(folder, k).relative_to(folder)),
                start=spec.ids_of(k).start,
                count=len(spec.ids_of(k)),
            )
            for k in range(spec.n_shards)
        ],
        completed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    atomic_write_text(folder / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


class EmbeddingShards:
    """A finished shard folder, read one shard at a time."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST_FILE
        if not path.is_file():
            unfinished = (self.folder / SPEC_FILE).is_file()
            raise FileNotFoundError(
                f"{self.folder} is not a finished embedding folder (no {MANIFEST_FILE}); "
                + (
                    "it is unfinished: run `embedlab embed` again with --resume"
                    if unfinished
                    else "make one with `embedlab embed RUN_DIR --images FOLDER_OR_CSV --out DIR`"
                )
            )
        try:
            self.manifest = ShardManifest.model_validate_json(path.read_text())
        except ValidationError as error:
            raise ValueError(f"{path} is not a valid shard manifest: {error}") from None
        for record in self.manifest.shards:
            if not (self.folder / record.file).is_file():
                raise FileNotFoundError(f"{self.folder}: shard {record.file} is missing; embed it again")

    def __len__(self) -> int:
        return self.manifest.n_items

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    def __iter__(self) -> Iterator[Shard]:
        """The shards in id order, one in memory at a time."""
        for record in self.manifest.shards:
            rows = read_shard(self.folder / record.file)
            if rows.ids.shape != (record.count,) or rows.embeddings.shape != (record.count, self.dim):
                raise ValueError(
                    f"{self.folder / record.file} holds {rows.embeddings.shape} rows, the manifest says "
                    f"({record.count}, {self.dim}); embed it again"
                )
            yield rows

    def labels(self) -> np.ndarray:
        """(N,) int64 label codes of every item (8 bytes an item; the embeddings stay on disk)."""
        parts = [shard.labels for shard in self]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings (len(ids), D) of the given item ids, in the order given, read shard by shard."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"item ids must lie in [0, {len(self)}), got {ids.min()}..{ids.max()}")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        shard_of = ids // self.manifest.shard_size
        for record, shard in zip(self.manifest.shards, range(self.manifest.n_shards), strict=True):
            wanted = np.flatnonzero(shard_of == shard)
            if wanted.size:
                rows = read_shard(self.folder / record.file)
                out[wanted] = rows.embeddings[ids[wanted] - record.start]
        return out

    def items(self) -> Iterator[dict[str, Any]]:
        """The items (path, label, extra) in id order."""
        with (self.folder / ITEMS_FILE).open() as stream:
            for line in stream:
                yield json.loads(line)
