"""The gallery index on disk: embeddings, a faiss index over them, item metadata and a manifest.

INDEX_DIR/
  manifest.json    what made the index and how to query it (`IndexManifest`): model checkpoint and its
                   sha256, embedding size, preprocessing, post-processing, faiss kind, open-set threshold
  items.jsonl      one gallery item per line in id order: {"path", "label", "extra": {CSV columns}}
  embeddings.npy   (N, D) float32 unit rows in id order, kept so the faiss index can be rebuilt
  index.faiss      the faiss index over those rows: IndexFlatIP, IndexIVFFlat, IndexHNSWFlat or
                   IndexIVFPQ; or index-000.faiss, index-001.faiss, ... when it is split over several
                   files (faiss.shards), shard i holding a contiguous range of ids, searched as one
  whitening.npz    the PCA whitening of the vectors, when the index was built with one

Every write builds a complete new folder beside the old one (`.INDEX_DIR.incoming`) and swaps it in
with two renames (old -> `.INDEX_DIR.previous`, new -> INDEX_DIR). A writer killed before the swap
leaves the old folder untouched; one killed between the two renames leaves the old folder under its
`.previous` name, and the next load or write puts it back. Writers and loaders of indexes in one parent
folder take an exclusive lock on that folder, so a loader never reads half of one index and half of
another.

This module needs numpy, faiss and pydantic only (no torch), so that an index loads quickly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedlab.retrieval.arrays import sample_rows
from embedlab.retrieval.exclusions import make_exclusions
from embedlab.retrieval.faiss_index import (
    IndexKind,
    IndexOptions,
    ShardedIndexBuilder,
    add_rows,
    combine,
    empty_index,
    parts,
    set_search_parameters,
)
from embedlab.retrieval.postprocessing import StepConfig, build_step
from embedlab.retrieval.recall import RecallRecord, measure_recall
from embedlab.retrieval.whitening import PCAWhitening

MANIFEST_FILE = "manifest.json"
ITEMS_FILE = "items.jsonl"
EMBEDDINGS_FILE = "embeddings.npy"
FAISS_FILE = "index.faiss"
WHITENING_FILE = "whitening.npz"
FORMAT_VERSION = 1

CheckpointName = Literal["best", "last"]
# The kinds as `index build --kind` and manifests spell them; "flat" is exact search.
ManifestKind = Literal["flat", "ivf", "hnsw", "ivfpq"]
RequestedKind = Literal["auto", "flat", "ivf", "hnsw", "ivfpq"]
MANIFEST_KINDS: tuple[ManifestKind, ...] = ("flat", "ivf", "hnsw", "ivfpq")
#: Each manifest kind as `embedlab.retrieval.faiss_index` names it.
INDEX_KIND_OF: dict[ManifestKind, IndexKind] = {
    "flat": "exact",
    "ivf": "ivf",
    "hnsw": "hnsw",
    "ivfpq": "ivfpq",
}

# Up to FLAT_MAX_ITEMS an exact scan of the gallery costs a few milliseconds per query on one core
# (1e5 x 128 multiply-adds), so exact answers are free. HNSW answers in about log(N) and needs no
# training, but its graph costs ~2 x hnsw_m int32 links per item and its build time grows fastest;
# above HNSW_MAX_ITEMS an IVF index (k-means cells, trained once) builds and grows more cheaply.
FLAT_MAX_ITEMS = 100_000
HNSW_MAX_ITEMS = 1_000_000
#: Gallery rows searched as queries (each left out of its own results) to measure an approximate
#: index's recall@10 against exact search when it is built.
RECALL_QUERIES = 1000
RECALL_K = 10


def choose_kind(requested: RequestedKind, n_items: int) -> ManifestKind:
    """The faiss index kind for a gallery of n_items: the requested one, or by size for "auto"."""
    if requested != "auto":
        return requested
    if n_items <= FLAT_MAX_ITEMS:
        return "flat"
    return "hnsw" if n_items <= HNSW_MAX_ITEMS else "ivf"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ manifest


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRecord(_Record):
    """The checkpoint whose embedder made the gallery embeddings (and must embed the queries)."""

    run_dir: str = Field(description="absolute path of the run folder at build time")
    checkpoint: CheckpointName = "best"
    checkpoint_sha256: str
    backbone: str
    embedding_dim: int = Field(gt=0)
    weight: float = Field(1.0, gt=0.0, description="its weight in an ensemble")


class PreprocessingRecord(_Record):
    """How a file becomes the embedder's input; the embedder then scales and normalises it."""

    decode: Literal["pil"] = Field("pil", description="decoded with Pillow, first frame of animations")
    channels: Literal[1, 3] = Field(description="1: converted to grey (L), 3: converted to RGB")
    image_size: int = Field(gt=0, description="resized to image_size x image_size, bilinear (Pillow)")
    mean: list[float] = Field(description="per channel, applied to pixels / 255 inside the embedder")
    std: list[float]


class PostprocessingRecord(_Record):
    """What happens to embeddings after the model(s): test-time views averaged, the ensemble's members
    concatenated with their weights, unit length; then the post-processing `steps` in order, each a
    `{name, args}` config of `embedlab.retrieval.postprocessing` (whiten: whitening.npz holds the fitted
    whitening; dba: applied to the stored gallery; qe: applied to each query at search time). Compared by
    inner product (cosine).

    A manifest written before the steps list (whitening_dim, dba and qe fields) is read as that list.
    """

    l2_normalize: bool = True
    similarity: Literal["cosine"] = "cosine"
    tta_flip: bool = False
    tta_scales: list[float] = Field(default_factory=lambda: [1.0])
    steps: list[StepConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _steps_of_the_old_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not {"whitening_dim", "dba", "qe"} & data.keys():
            return data
        data = dict(data)
        steps = list(data.get("steps", []))
        if (dim := data.pop("whitening_dim", None)) is not None:
            steps.append({"name": "whiten", "args": {"dim": dim, "fit_on": "gallery"}})
        for name in ("dba", "qe"):
            if (expansion := data.pop(name, None)) is not None:
                steps.append({"name": name, "args": dict(expansion)})
        data["steps"] = steps
        return data

    @field_validator("steps")
    @classmethod
    def _steps_build(cls, steps: list[StepConfig]) -> list[StepConfig]:
        # Built to be checked by each step's own validator, and kept in the form the step gives back.
        return [build_step(config).config() for config in steps]

    def step(self, name: str) -> StepConfig | None:
        """The config of the step called `name`, None when the index has none."""
        return next((config for config in self.steps if config.name == name), None)

    @property
    def whitening_dim(self) -> int | None:
        """The size the whitening step leaves (whitening.npz), None without one."""
        whiten = self.step("whiten")
        return None if whiten is None else int(whiten.args["dim"])


class FaissRecord(_Record):
    """The faiss index kind and its parameters (see `embedlab.retrieval.faiss_index.IndexOptions`)."""

    kind: ManifestKind
    requested_kind: RequestedKind = Field(description="what the user asked for; auto follows the size")
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = Field(None, description="IVF cells (ivf, ivfpq); set when built")
    ivf_nprobe: int = Field(16, description="cells visited per query")
    train_size: int | None = Field(None, description="rows sampled to train the cells and codebooks")
    pq_m: int | None = Field(None, description="ivfpq: sub-vectors per row, one code of pq_nbits each")
    pq_nbits: int = Field(8, ge=1, le=16)
    shards: int = Field(1, ge=1, description="faiss files the index is split over, searched as one")
    recall: RecallRecord | None = Field(
        None,
        description="approximate kinds, at build time: recall@k against exact search, with n_queries "
        "gallery rows as queries (each left out of its own results)",
    )

    @property
    def index_kind(self) -> IndexKind:
        """The kind as `embedlab.retrieval.faiss_index` names it."""
        return INDEX_KIND_OF[self.kind]

    def options(self) -> IndexOptions:
        return IndexOptions(
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            hnsw_ef_search=self.hnsw_ef_search,
            ivf_nlist=self.ivf_nlist,
            ivf_nprobe=self.ivf_nprobe,
            pq_m=self.pq_m,
            pq_nbits=self.pq_nbits,
            train_size=self.train_size,
        )

    def files(self) -> list[str]:
        """The faiss files of the index, in shard order."""
        if self.shards == 1:
            return [FAISS_FILE]
        return [f"index-{shard:03d}.faiss" for shard in range(self.shards)]


class SourceRecord(_Record):
    """One batch of gallery items: where they came from and when (`index build`, then each `add`)."""

    source: str
    items: int = Field(ge=0)
    added_at: str


class OpenSetRecord(_Record):
    """The similarity threshold below which a query is a new identity, and its operating point on the
    calibration data (see `embedlab.serving.calibrate`)."""

    threshold: float
    objective: Literal["target_fmr", "best_f1"]
    target_fmr: float | None = None
    false_match_rate: float
    true_match_rate: float
    precision: float
    recall: float
    f1: float
    n_mated: int
    n_non_mated: int
    calibration_data: str
    calibrated_at: str


class IndexManifest(_Record):
    format_version: Literal[1] = FORMAT_VERSION
    created_at: str
    updated_at: str
    size: int = Field(0, ge=0, description="number of gallery items (set when the index is built)")
    versions: dict[str, str] = Field(default_factory=dict)
    model: ModelRecord
    preprocessing: PreprocessingRecord
    postprocessing: PostprocessingRecord = PostprocessingRecord()
    faiss: FaissRecord
    sources: list[SourceRecord] = Field(default_factory=list)
    open_set: OpenSetRecord | None = None
    ensemble: list[ModelRecord] = Field(
        default_factory=list, description="more models whose embeddings are concatenated with `model`'s"
    )

    @property
    def models(self) -> list[ModelRecord]:
        return [self.model, *self.ensemble]

    @property
    def vector_dim(self) -> int:
        """The size of the stored vectors: the models' sizes summed, or the whitening's."""
        whitened = self.postprocessing.whitening_dim
        return whitened or sum(record.embedding_dim for record in self.models)


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its file (absolute path), its identity, and the CSV's other columns."""

    path: str
    label: str
    extra: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- index


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


# ----------------------------------------------------------------------------------- writing, loading


def _sibling(index_dir: Path, role: Literal["incoming", "previous"]) -> Path:
    return index_dir.parent / f".{index_dir.name}.{role}"


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on a folder (flock on its descriptor), released on exit."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _recover(index_dir: Path) -> None:
    """Finish what an interrupted writer left: put the previous index back if it was moved aside but
    the new one never arrived, and delete leftovers. Call with the folder lock held."""
    previous, incoming = _sibling(index_dir, "previous"), _sibling(index_dir, "incoming")
    if previous.exists():
        if index_dir.exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, index_dir)
    if incoming.exists():
        shutil.rmtree(incoming)


def _write_files(index: GalleryIndex, folder: Path) -> None:

    with (folder / EMBEDDINGS_FILE).open("wb") as stream:
        np.save(stream, np.ascontiguousarray(index.embeddings, dtype=np.float32))
        stream.flush()
        os.fsync(stream.fileno())
    with (folder / ITEMS_FILE).open("w") as stream:
        for item in index.items:
            stream.write(json.dumps({"path": item.path, "label": item.label, "extra": item.extra}) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    write_faiss_files(index.faiss_index, index.manifest.faiss, folder)
    if index.whitening is not None:
        index.whitening.save(folder / WHITENING_FILE)
    write_manifest_last(index.manifest, folder)


def write_faiss_files(faiss_index: Any, record: FaissRecord, folder: Path) -> None:
    """The index's shards to their files (record.files()), each flushed to disk."""
    import faiss

    shards = parts(faiss_index)
    if len(shards) != record.shards:
        raise ValueError(f"the faiss index has {len(shards)} shards, its record says {record.shards}")
    for name, shard in zip(record.files(), shards, strict=True):
        faiss.write_index(shard, str(folder / name))
        _fsync_path(folder / name)


def write_streamed_rows(
    folder: Path, n_rows: int, dim: int, blocks: Iterable[np.ndarray], items_file: Path
) -> None:
    """embeddings.npy written block by block (rows in id order, never all in memory) and items.jsonl
    copied from `items_file` (lines of the same form), each flushed to disk.

    Plain writes after the .npy header, not a memory map: every page written through a map stays in
    the process's resident memory until it is unmapped (half a GiB for a million 128-d rows).
    """
    written = 0
    with (folder / EMBEDDINGS_FILE).open("wb") as stream:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(stream, {**header, "shape": (n_rows, dim)})
        for block in blocks:
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"a block of rows has shape {block.shape}, expected (n, {dim})")
            np.ascontiguousarray(block, dtype=np.float32).tofile(stream)
            written += len(block)
        stream.flush()
        os.fsync(stream.fileno())
    if written != n_rows:
        raise ValueError(f"the blocks held {written} rows, {n_rows} were expected")
    shutil.copyfile(items_file, folder / ITEMS_FILE)
    _fsync_path(folder / ITEMS_FILE)


def write_manifest_last(manifest: IndexManifest, folder: Path) -> None:
    """The manifest, flushed, and the folder's entries: a folder with a manifest has everything the
    manifest describes."""
    with (folder / MANIFEST_FILE).open("w") as stream:
        stream.write(manifest.model_dump_json(indent=2) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    _fsync_path(folder)


def _swap_in(incoming: Path, index_dir: Path) -> None:
    """Move the finished `incoming` folder to index_dir, replacing what is there."""
    previous = _sibling(index_dir, "previous")
    if index_dir.exists():
        os.replace(index_dir, previous)
        os.replace(incoming, index_dir)
        _fsync_path(index_dir.parent)
        shutil.rmtree(previous)
    else:
        os.replace(incoming, index_dir)
        _fsync_path(index_dir.parent)


def is_index_dir(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def check_writable(index_dir: Path, replace: bool) -> None:
    """Raise FileExistsError if writing index_dir would replace a folder it must not replace."""
    if not index_dir.exists():
        return
    if not is_index_dir(index_dir):
        raise FileExistsError(
            f"{index_dir} exists and is not an embedlab index (no {MANIFEST_FILE}); choose another folder"
        )
    if not replace:
        raise FileExistsError(
            f"index {index_dir} already exists; pass --force to replace it, or use `embedlab index add` "
            "to add images to it"
        )


def write_index(index: GalleryIndex, index_dir: str | Path, *, replace: bool = False) -> None:
    """Write `index` to index_dir as one atomic folder swap (see the module docstring).

    An existing index is replaced only with replace=True; a folder that is not an index never is.
    """
    write_index_folder(index_dir, lambda folder: _write_files(index, folder), replace=replace)


def write_index_folder(index_dir: str | Path, fill: Callable[[Path], None], *, replace: bool = False) -> None:
    """Let `fill(folder)` write an index's files into a new folder, then swap it in for index_dir
    atomically (see the module docstring); fill writes the manifest last and flushes what it writes."""
    index_dir = Path(index_dir).absolute()
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(index_dir.parent):
        _recover(index_dir)
        check_writable(index_dir, replace)
        incoming = _sibling(index_dir, "incoming")
        incoming.mkdir()
        try:
            fill(incoming)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        _swap_in(incoming, index_dir)


def _read_items(path: Path) -> list[GalleryItem]:
    items = []
    with path.open() as stream:
        for number, line in enumerate(stream, start=1):
            try:
                row = json.loads(line)
                items.append(GalleryItem(path=row["path"], label=row["label"], extra=row.get("extra", {})))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: not a gallery item ({error})") from None
    return items


def read_manifest(index_dir: Path) -> IndexManifest:
    path = index_dir / MANIFEST_FILE
    try:
        return IndexManifest.model_validate_json(path.read_text())
    except ValidationError as error:
        raise ValueError(f"{path} is not a valid index manifest: {error}") from None


def load_index(index_dir: str | Path) -> GalleryIndex:
    """Read an index folder; its files are checked against each other and against the manifest."""
    import faiss

    index_dir = Path(index_dir).absolute()
    if not index_dir.parent.is_dir():
        raise FileNotFoundError(f"index folder {index_dir} does not exist")
    with _folder_lock(index_dir.parent):
        _recover(index_dir)
        if not is_index_dir(index_dir):
            raise FileNotFoundError(
                f"{index_dir} is not an embedlab index (no {MANIFEST_FILE}); "
                "build one with `embedlab index build RUN_DIR --gallery FOLDER --out INDEX_DIR`"
            )
        manifest = read_manifest(index_dir)
        items = _read_items(index_dir / ITEMS_FILE)
        # Memory-mapped: the server keeps the rows for rebuilding only, search goes through faiss.
        embeddings = np.load(index_dir / EMBEDDINGS_FILE, mmap_mode="r")
        missing = [name for name in manifest.faiss.files() if not (index_dir / name).is_file()]
        if missing:
            raise ValueError(f"index {index_dir} is inconsistent: {', '.join(missing)} missing; rebuild it")
        faiss_index = combine([faiss.read_index(str(index_dir / name)) for name in manifest.faiss.files()])
    dim = manifest.vector_dim
    checks = {
        f"{ITEMS_FILE} rows": len(items),
        f"{EMBEDDINGS_FILE} rows": embeddings.shape[0],
        f"{'+'.join(manifest.faiss.files())} vectors": int(faiss_index.ntotal),
    }
    wrong = {name: count for name, count in checks.items() if count != manifest.size}
    if wrong or embeddings.shape[1:] != (dim,) or faiss_index.d != dim:
        raise ValueError(
            f"index {index_dir} is inconsistent: the manifest says {manifest.size} items of size {dim}, "
            f"but {', '.join(f'{k}: {v}' for k, v in checks.items())}, {EMBEDDINGS_FILE} shape "
            f"{embeddings.shape}, faiss dimension {faiss_index.d}; rebuild it"
        )
    whitening = None
    if manifest.postprocessing.whitening_dim is not None:
        whitening = PCAWhitening.load(index_dir / WHITENING_FILE)
        if whitening.output_dim != dim:
            raise ValueError(
                f"index {index_dir} is inconsistent: {WHITENING_FILE} whitens to {whitening.output_dim} "
                f"dimensions, the manifest says {dim}; rebuild it"
            )
    configure_search(faiss_index, manifest.faiss)
    return GalleryIndex(manifest, items, embeddings, faiss_index, whitening)
