"""What an index folder holds and the records of its manifest.json.

INDEX_DIR/
  manifest.json    what made the index and how to query it (`IndexManifest`): model checkpoint and its
                   sha256, embedding size, preprocessing, post-processing, faiss kind, open-set threshold
  items.jsonl      one gallery item per line in id order: {"path", "label", "extra": {CSV columns}}
  embeddings.npy   (N, D) float32 unit rows in id order, kept so the faiss index can be rebuilt
  index.faiss      the faiss index over those rows: IndexFlatIP, IndexIVFFlat, IndexHNSWFlat or
                   IndexIVFPQ; or index-000.faiss, index-001.faiss, ... when it is split over several
                   files (faiss.shards), shard i holding a contiguous range of ids, searched as one
  whitening.npz    the PCA whitening of the vectors, when the index was built with one

The manifest says what made the index and how to query it; `embedlab.index.store` writes and reads
the folder.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedlab.retrieval.faiss_index import (
    IndexKind,
    IndexOptions,
)
from embedlab.retrieval.postprocessing import StepConfig, build_step
from embedlab.retrieval.recall import RecallRecord

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


def choose_kind(requested: RequestedKind, n_items: int) -> ManifestKind:
    """The faiss index kind for a gallery of n_items: the requested one, or by size for "auto"."""
    if requested != "auto":
        return requested
    if n_items <= FLAT_MAX_ITEMS:
        return "flat"
    return "hnsw" if n_items <= HNSW_MAX_ITEMS else "ivf"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
