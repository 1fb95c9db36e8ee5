"""Search: a gallery index joined with the model(s) that made it; images in, top-k and the open-set
decision out.

An index is only meaningful with the models that embedded its gallery. The manifest records them (run
folder, checkpoint, sha256 of the checkpoint file, embedding size; input size and channels) and the
post-processing; `load_pipeline` rebuilds that pipeline, loading each run (or, for the index's own
model, another run named by the caller) and refusing any that differs, and the searcher applies the query
side of the manifest's post-processing steps. A `ReloadingSearcher` follows an index folder as writers
(`index add`, `calibrate`, `index build --force`) replace it, for a server that outlives them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedlab.data.decoding import DEFAULT_MAX_PIXELS, decode_image
from embedlab.data.images import LabelledImages
from embedlab.embeddings.encoder import EmbeddingPipeline
from embedlab.index.gallery import GalleryIndex
from embedlab.index.manifest import IndexManifest, ModelRecord, PostprocessingRecord
from embedlab.index.store import folder_stamp, load_index
from embedlab.models.devices import resolve_device
from embedlab.models.tta import TestTimeAugmentation
from embedlab.retrieval.postprocessing import build_steps, expand_queries, transform_queries
from embedlab.training.run_dir import LoadedRun, load_run

logger = logging.getLogger(__name__)


class ModelMismatchError(ValueError):
    """The model offered for an index is not the one that built it."""


def checkpoint_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_model(record: ModelRecord, run: LoadedRun, sha256: str, index_dir: Path) -> None:
    """Raise ModelMismatchError unless `run` (whose checkpoint hashes to sha256) is the model `record`
    describes."""
    fix = (
        f"search with the run that built it (--run {record.run_dir}), or rebuild the index with "
        f"`embedlab index build {run.run_dir} --gallery ... --out {index_dir} --force`"
    )
    if run.embedder.embedding_dim != record.embedding_dim:
        raise ModelMismatchError(
            f"index {index_dir} holds embeddings of size {record.embedding_dim}, but "
            f"{run.checkpoint_path} makes embeddings of size {run.embedder.embedding_dim}; {fix}"
        )
    if sha256 != record.checkpoint_sha256:
        raise ModelMismatchError(
            f"index {index_dir} was built by a checkpoint with sha256 {record.checkpoint_sha256[:16]}..., "
            f"but {run.checkpoint_path} has sha256 {sha256[:16]}... (retrained or replaced since); {fix}"
        )


def _check_input(manifest: IndexManifest, run: LoadedRun, index_dir: Path) -> None:
    preprocess = run.embedder.preprocess
    wanted = manifest.preprocessing
    if (preprocess.channels, preprocess.size) != (wanted.channels, wanted.image_size):
        raise ModelMismatchError(
            f"index {index_dir} was built for {wanted.channels}-channel {wanted.image_size}px images, but "
            f"{run.checkpoint_path} takes {preprocess.channels}-channel {preprocess.size}px images; search "
            f"with the run that built it (--run {manifest.model.run_dir})"
        )


def _load_checked(record: ModelRecord, index_dir: Path, run_dir: str | Path | None) -> LoadedRun:
    try:
        run = load_run(run_dir or record.run_dir, record.checkpoint)
    except FileNotFoundError as error:
        if run_dir is not None:
            raise
        raise FileNotFoundError(
            f"{error}; index {index_dir} was built by that run: pass the run folder with --run "
            "if it has moved"
        ) from None
    check_model(record, run, checkpoint_sha256(run.checkpoint_path), index_dir)
    return run


def load_matching_run(
    manifest: IndexManifest, index_dir: Path, run_dir: str | Path | None = None
) -> LoadedRun:
    """The run that built the index (or `run_dir`, which must hold the same checkpoint), loaded."""
    run = _load_checked(manifest.model, index_dir, run_dir)
    _check_input(manifest, run, index_dir)
    return run


def tta_of(record: PostprocessingRecord) -> TestTimeAugmentation | None:
    """The test-time views an index's vectors were embedded with, None for the image alone."""
    if not record.tta_flip and record.tta_scales == [1.0]:
        return None
    return TestTimeAugmentation(flip=record.tta_flip, scales=tuple(record.tta_scales))


def load_pipeline(
    manifest: IndexManifest, index_dir: Path, run_dir: str | Path | None = None, device: str = "auto"
) -> tuple[LoadedRun, EmbeddingPipeline]:
    """The index's model (or `run_dir`, the same checkpoint), loaded, and the pipeline of it, its
    ensemble members (from their run folders, each checked against its record) and its test-time
    views, on `device` ("auto": the GPU when torch sees one)."""
    runs = [load_matching_run(manifest, index_dir, run_dir)]
    runs += [_load_checked(record, index_dir, None) for record in manifest.ensemble]
    pipeline = EmbeddingPipeline(
        embedders=[run.embedder for run in runs],
        weights=[record.weight for record in manifest.models],
        tta=tta_of(manifest.postprocessing),
        precision=runs[0].config.train.precision,
    )
    return runs[0], pipeline.to(resolve_device(device))


@dataclass(frozen=True)
class SearchHit:
    """One gallery item found for a query: its id, identity, file, cosine similarity, CSV columns."""

    id: int
    label: str
    path: str
    score: float
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryResult:
    """The top-k of one query, best first, whether it is a new identity (None: no threshold), and the
    threshold that decided it."""

    hits: list[SearchHit]
    new_identity: bool | None
    threshold: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"results": [asdict(hit) for hit in self.hits], "new_identity": self.new_identity}


class Searcher:
    """An index, the pipeline that embeds its queries and the query side of its post-processing steps;
    thread-safe for concurrent searches (all are only read)."""

    def __init__(self, index: GalleryIndex, pipeline: EmbeddingPipeline, index_dir: Path) -> None:
        self.index = index
        self.pipeline = pipeline
        self.index_dir = index_dir
        self.steps = build_steps(index.manifest.postprocessing.steps, index.whitening)

    def current(self) -> Searcher:
        """This searcher: its index is the one it was made with (see `ReloadingSearcher`)."""
        return self

    @property
    def threshold(self) -> float | None:
        open_set = self.index.manifest.open_set
        return None if open_set is None else open_set.threshold

    def decode(self, data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Encoded image bytes -> uint8 (C, S, S) as the gallery was read (see embedlab.data.decoding)."""
        settings = self.index.manifest.preprocessing
        return decode_image(data, settings.image_size, settings.channels, max_pixels=max_pixels, name=name)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 images (B, C, S, S) -> the index's unit vectors (B, D) float32 (whitened when the index
        is)."""
        return transform_queries(self.steps, self.pipeline.embed_pixels(pixels))

    def embed_images(
        self, images: LabelledImages, batch_size: int, num_workers: int = 0, progress: bool = False
    ) -> np.ndarray:
        """A collection -> the index's unit vectors (N, D), as `embed` makes them."""
        return transform_queries(
            self.steps, self.pipeline.embed_images(images, batch_size, num_workers, progress)
        )

    def expand(self, embeddings: np.ndarray) -> np.ndarray:
        """The query side of the steps that expand queries (qe) with the stored gallery vectors."""
        return expand_queries(self.steps, embeddings, np.asarray(self.index.embeddings), self.index.search)

    def search_embeddings(self, embeddings: np.ndarray, k: int) -> list[QueryResult]:
        """Top-k and the open-set decision of each query vector (Nq, D), after query expansion when
        the index asks for it; the open-set decision uses the expanded query's best score."""
        scores, ids = self.index.search(self.expand(embeddings), k)
        threshold = self.threshold
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = [self._hit(int(i), float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            top = hits[0].score if hits else -np.inf
            results.append(QueryResult(hits, None if threshold is None else bool(top < threshold), threshold))
        return results

    def search(self, pixels: np.ndarray, k: int) -> list[QueryResult]:
        """Top-k and the open-set decision of each uint8 image (B, C, S, S)."""
        return self.search_embeddings(self.embed(pixels), k)

    def search_files(
        self, paths: Sequence[Path], k: int, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> list[QueryResult]:
        """Top-k of image files, decoded like uploads (errors name the file)."""
        pixels = []
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"query image {path} does not exist")
            pixels.append(self.decode(path.read_bytes(), str(path), max_pixels))
        return self.search(np.stack(pixels), k) if pixels else []

    def _hit(self, item_id: int, score: float) -> SearchHit:
        item = self.index.items[item_id]
        return SearchHit(id=item_id, label=item.label, path=item.path, score=score, extra=item.extra)


def open_searcher(index_dir: str | Path, run_dir: str | Path | None = None, device: str = "auto") -> Searcher:
    """Load an index and the model that built it (or `run_dir`, checked to be the same model), the
    model on `device`."""
    index_dir = Path(index_dir).absolute()
    index = load_index(index_dir)
    _, pipeline = load_pipeline(index.manifest, index_dir, run_dir, device)
    return Searcher(index, pipeline, index_dir)


class SearcherSource(Protocol):
    """What gives the searcher to answer a request with: a `Searcher` (always itself) or a
    `ReloadingSearcher` (the index as last written)."""

    def current(self) -> Searcher: ...


def _same_pipeline(a: IndexManifest, b: IndexManifest) -> bool:
    """Whether the two manifests' vectors are made by the same models, input and test-time views."""
    return (a.models, a.preprocessing, tta_of(a.postprocessing)) == (
        b.models,
        b.preprocessing,
        tta_of(b.postprocessing),
    )


class ReloadingSearcher:
    """The searcher of an index folder, following the folder as writers replace it; thread-safe.

    `current()` costs one stat of the manifest while nothing changed. Each write swaps a complete new
    folder in (`embedlab.index.store`), so its manifest is a new file; when the stat differs from the
    one taken before the last load, the folder is loaded again (under the store's folder lock, so never
    half written), a new `Searcher` is made and swapped in as one reference: a request in flight keeps
    the searcher it started with. The model pipeline is kept when the new manifest records the same
    models, input and test-time views (as after `add` or `calibrate`), and loaded again otherwise. A new
    folder that cannot be loaded is logged and the previous searcher kept, until the folder changes
    again.
    """

    def __init__(
        self, index_dir: str | Path, run_dir: str | Path | None = None, device: str = "auto"
    ) -> None:
        self.index_dir = Path(index_dir).absolute()
        self.run_dir = run_dir
        self.device = device
        # Stamped before loading: a write in between is then seen, and loaded, at the next call.
        stamp = folder_stamp(self.index_dir)
        self._state = (stamp, open_searcher(self.index_dir, run_dir, device))
        self._reloading = threading.Lock()

    def current(self) -> Searcher:
        """The searcher of the index as last written (loaded now if a write swapped it since)."""
        stamp, searcher = self._state
        if folder_stamp(self.index_dir) == stamp:
            return searcher
        with self._reloading:
            stamp, searcher = self._state
            now = folder_stamp(self.index_dir)
            if now is None or now == stamp:  # between a writer's two renames, or reloaded meanwhile
                return searcher
            self._state = (now, self._reload(searcher))
            return self._state[1]

    def _reload(self, previous: Searcher) -> Searcher:
        try:
            index = load_index(self.index_dir)
            if _same_pipeline(index.manifest, previous.index.manifest):
                pipeline = previous.pipeline
            else:
                _, pipeline = load_pipeline(index.manifest, self.index_dir, self.run_dir, self.device)
        except Exception as error:  # a bad folder on disk must not stop the good index from being served
            logger.warning(
                "index %s changed but cannot be loaded (%s); still searching the %d items loaded before",
                self.index_dir,
                error,
                len(previous.index),
            )
            return previous
        logger.info("index %s reloaded: %d items (was %d)", self.index_dir, len(index), len(previous.index))
        return Searcher(index, pipeline, self.index_dir)
