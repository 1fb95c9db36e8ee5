"""The Python API that `import embedlab` exposes (lazily, so the import itself stays cheap): `train`,
`load`, `evaluate` and `Index`, each a thin layer over the pipelines the CLI calls. docs/python-api.md
walks through it.

Images, wherever the API takes them (`Model.embed`, `Index.search`): an image file path (str or Path),
a folder (its image files, sorted by path, sub-folders included), a PIL image, a uint8 array (H, W) or
(H, W, C), a uint8 stack (N, H, W, C), or a list of any of these. Each is decoded as gallery files are
(converted to L or RGB, resized bilinearly to the run's square), so a file embeds to the same vector
here as in an index.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from embedlab.config import ExperimentConfig, load_config, set_dotted
from embedlab.data.decoding import decode_image

# What needs torch is imported when a function runs: `embedlab.train` is reached, and a config with a
# typo refused, without importing torch or Lightning.
if TYPE_CHECKING:
    from embedlab.embeddings.encoder import EmbeddingPipeline
    from embedlab.evaluation import RetrievalResult
    from embedlab.index.gallery import GalleryIndex
    from embedlab.index.search import QueryResult, Searcher

#: Images decoded and embedded at a time by `Model.embed` and `Index.search`.
EMBED_BATCH = 256


def _packaged_config(name: str) -> Path:
    return Path(str(resources.files("embedlab") / "configs" / name))


def _resolve_config_path(config: str | Path) -> Path:
    """A YAML file, or the name of a packaged config (`image_folder.yaml`, `image_folder`)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.parent == Path("."):
        for name in (path.name, f"{path.name}.yaml"):
            packaged = _packaged_config(name)
            if packaged.is_file():
                return packaged
    raise FileNotFoundError(
        f"config {config} is neither a file nor one of embedlab's packaged configs "
        f"({', '.join(sorted(p.name for p in _packaged_config('.').glob('*.yaml')))})"
    )


def _config_of(
    config: str | Path | Mapping[str, Any] | ExperimentConfig | None, overrides: dict[str, Any]
) -> tuple[ExperimentConfig, Path | None]:
    """The validated config: a YAML path (or a packaged config's name), a mapping of sections, an
    ExperimentConfig or None (the defaults), with `overrides` (`section__key=value`) applied."""
    if isinstance(config, ExperimentConfig):
        base: Mapping[str, Any] | None = config.model_dump(mode="json", exclude={"grid"})
        path = None
    elif isinstance(config, Mapping):
        base, path = config, None
    elif config is None:
        base, path = {}, None
    else:
        base, path = None, _resolve_config_path(config)
    cfg, raw = load_config(path, base=base)
    for key, value in overrides.items():
        set_dotted(raw, key.replace("__", "."), value)
    if overrides:
        cfg, _ = load_config(None, base=raw)
    return cfg, path


@dataclass
class Run:
    """A finished training run: its folder, its summary.json and final validation metrics."""

    run_dir: Path
    summary: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """A run folder written by `train` or `embedlab train`."""
        from embedlab.training.run_dir import SUMMARY_FILE, read_json

        run_dir = Path(run_dir)
        return cls(run_dir, read_json(run_dir / SUMMARY_FILE))

    @property
    def metrics(self) -> dict[str, float]:
        """The last epoch's validation metrics, by their names in docs/evaluation.md."""
        return dict(self.summary.get("metrics", {}))

    def load(self, checkpoint: str = "best", device: str = "auto") -> Model:
        return load(self, checkpoint, device)

    def evaluate(self, metrics: Sequence[str] | None = None, checkpoint: str = "best") -> RetrievalResult:
        return evaluate(self, metrics=metrics, checkpoint=checkpoint)

    def __str__(self) -> str:
        values = ", ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())
        return f"run {self.run_dir}: {values or 'no metrics'}"


def train(
    config: str | Path | Mapping[str, Any] | ExperimentConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Run:
    """Train one run, as `embedlab train` does, and return it.

    config: a YAML file, the name of a packaged config (`image_folder.yaml`), a mapping of sections
    (`{"data": {"dataset": "digits"}}`), an ExperimentConfig, or None for the defaults.
    overrides: config keys with `__` for the dots, values as Python objects:
    `train(cfg, train__epochs=5, model__backbone="resnet18", loss={"name": "CircleLoss"})`; an unknown
    key raises ConfigError naming the nearest valid one, before anything is trained.
    out: the run folder (default runs/<config file's stem>, or runs/run); an existing one is kept
    unless `force` (overwrite) or `resume` (continue from its last checkpoint).
    """
    cfg, path = _config_of(config, overrides)  # checked before torch is imported
    from embedlab.training.fit import fit

    run_dir = Path(out) if out is not None else Path("runs") / (path.stem if path is not None else "run")
    result = fit(cfg, run_dir, resume=resume, force=force, progress=progress)
    return Run(result.run_dir, result.summary)


def _run_dir_of(run: Run | Model | str | Path) -> Path:
    if isinstance(run, Run | Model):
        return run.run_dir
    return Path(run)


def _image_files_in(folder: Path) -> list[Path]:
    from embedlab.data.sources import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"folder {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _flatten(images: Any) -> Iterator[Any]:
    """Each image of `images` (see the module docstring), in order."""
    if isinstance(images, str | Path):
        path = Path(images)
        if path.is_dir():
            yield from _image_files_in(path)
        else:
            yield path
    elif isinstance(images, Image.Image):
        yield images
    elif isinstance(images, np.ndarray):
        if images.ndim == 4:
            yield from images
        elif images.ndim == 3 and images.shape[-1] not in (1, 3, 4):
            yield from images  # a stack of grey images (N, H, W)
        else:
            yield images
    elif isinstance(images, Sequence):
        for item in images:
            yield from _flatten(item)
    else:
        raise TypeError(
            "images must be image file paths, a folder, PIL images or uint8 arrays (H, W) / (H, W, C) / "
            f"(N, H, W, C), or a list of them; got {type(images).__name__}"
        )


def _pixels(image: Any, size: int, channels: int) -> np.ndarray:
    """One image -> uint8 (channels, size, size), decoded as gallery files are."""
    if isinstance(image, Path):
        if not image.is_file():
            raise FileNotFoundError(f"image file {image} does not exist")
        return decode_image(image.read_bytes(), size, channels, name=str(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"image arrays must be uint8 (0..255), got {image.dtype}; convert with "
                "np.clip(array, 0, 255).astype(np.uint8)"
            )
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3):
            raise ValueError(f"an image array is (H, W) or (H, W, C), got shape {image.shape}")
        image = Image.fromarray(image)
    # Through an in-memory PNG, so that a PIL image is decoded by the very code that decodes files.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return decode_image(buffer.getvalue(), size, channels, name="image")


def _batches(images: Any, size: int, channels: int) -> Iterator[np.ndarray]:
    """The images as uint8 batches (B, channels, size, size) of at most EMBED_BATCH."""
    batch: list[np.ndarray] = []
    for image in _flatten(images):
        batch.append(_pixels(image, size, channels))
        if len(batch) == EMBED_BATCH:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@dataclass
class Model:
    """A run's trained embedder, ready to embed images (see `load`)."""

    run_dir: Path
    checkpoint_path: Path
    config: ExperimentConfig = field(repr=False)
    pipeline: EmbeddingPipeline = field(repr=False)

    @property
    def image_size(self) -> int:
        return int(self.pipeline.embedders[0].preprocess.size)

    @property
    def channels(self) -> int:
        return int(self.pipeline.embedders[0].preprocess.channels)

    @property
    def embedding_dim(self) -> int:
        return int(self.pipeline.embedders[0].embedding_dim)

    def embed(self, images: Any) -> np.ndarray:
        """Unit vectors (N, D) float32 of the images, in order (see the module docstring for what
        `images` may be; a folder's files are taken sorted by path)."""
        parts = [
            self.pipeline.embed_pixels(batch) for batch in _batches(images, self.image_size, self.channels)
        ]
        if not parts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)


def load(run: Run | str | Path, checkpoint: str = "best", device: str = "auto") -> Model:
    """A run's checkpoint (`best` or `last`) as a Model whose `.embed(images)` returns (N, D) vectors,
    embedding on `device` ("auto": the GPU when torch sees one, else the CPU; "cpu", "cuda", "cuda:N")."""
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint is 'best' or 'last', got {checkpoint!r}")
    from embedlab.embeddings.encoder import EmbeddingPipeline
    from embedlab.models.devices import resolve_device
    from embedlab.training.run_dir import load_run

    target = resolve_device(device, option="device")
    loaded = load_run(_run_dir_of(run), checkpoint)
    return Model(
        run_dir=loaded.run_dir,
        checkpoint_path=loaded.checkpoint_path,
        config=loaded.config,
        pipeline=EmbeddingPipeline([loaded.embedder], [1.0], precision=loaded.config.train.precision).to(
            target
        ),
    )


def evaluate(
    run_or_embeddings: Run | Model | str | Path | Any,
    labels: Any = None,
    gallery: Any = None,
    gallery_labels: Any = None,
    *,
    metrics: Sequence[str] | str | None = None,
    checkpoint: str = "best",
    device: Any = "auto",
    exclude_audit: str | Path | None = None,
    **options: Any,
) -> RetrievalResult:
    """Retrieval metrics, as a RetrievalResult that prints as a table.

    A run (a Run, a Model or a run folder): its checkpoint scored on its validation split, as
    `embedlab evaluate RUN_DIR` does (`labels`, `gallery` and `options` do not apply).
    Embeddings (Nq, D) with their labels (Nq,): searched in themselves, or against `gallery` (Ng, D)
    with `gallery_labels`; `options` are `evaluate_retrieval`'s (query_groups, average, per_class,
    method, ...; docs/evaluation.md). device: where exact evaluation computes, for runs and embeddings
    alike ("auto", "cpu", "cuda", "cuda:N"; see docs/evaluation.md, "On the GPU"). exclude_audit: for a
    run, an `embedlab audit` CSV (leaks.csv, label_conflicts.csv) whose held-out items are left out.
    """
    from embedlab.evaluation import evaluate_retrieval
    from embedlab.pipelines.evaluate import evaluate_run

    if isinstance(run_or_embeddings, Run | Model | str | Path):
        if labels is not None or gallery is not None or gallery_labels is not None or options:
            raise TypeError(
                "a run is scored on its own validation split: labels, gallery and options apply to embeddings"
            )
        names = [metrics] if isinstance(metrics, str) else metrics
        return evaluate_run(
            _run_dir_of(run_or_embeddings),
            names,
            which=checkpoint,
            device=device,
            exclude_audit=exclude_audit,
        )
    if exclude_audit is not None:
        raise TypeError("exclude_audit names images of a run's data: give a run")
    if labels is None:
        raise TypeError("evaluate(embeddings, labels): embeddings need their labels")
    if metrics is not None:
        options["metrics"] = metrics
    return evaluate_retrieval(run_or_embeddings, labels, gallery, gallery_labels, device=device, **options)


def _gallery_sources(gallery: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(gallery, str | Path):
        return [Path(gallery)]
    return [Path(item) for item in gallery]


class Index:
    """A gallery index folder and the model that embeds its queries (`Index.build`, `Index.open`)."""

    def __init__(self, path: Path, searcher: Searcher) -> None:
        self.path = path
        self._searcher = searcher

    @classmethod
    def build(
        cls,
        run: Run | Model | str | Path,
        gallery: str | Path | Sequence[str | Path],
        out: str | Path,
        *,
        kind: str = "auto",
        checkpoint: str = "best",
        label: str | None = None,
        force: bool = False,
        progress: bool = False,
        device: str = "auto",
    ) -> Index:
        """Embed a gallery (a folder with a sub-folder per identity, a CSV, or image files labelled by
        `label` or their folder's name) with a run's model into the index folder `out`, as
        `embedlab index build` does; `kind` is auto, flat, ivf or hnsw; the model embeds on `device`."""
        from embedlab.pipelines.index import build_gallery_index

        build_gallery_index(
            _run_dir_of(run),
            _gallery_sources(gallery),
            out,
            kind=kind,  # type: ignore[arg-type]  # checked by the manifest
            checkpoint=checkpoint,  # type: ignore[arg-type]
            label=label,
            force=force,
            progress=progress,
            device=device,
        )
        return cls.open(out, device=device)

    @classmethod
    def open(
        cls, path: str | Path, run: Run | Model | str | Path | None = None, device: str = "auto"
    ) -> Index:
        """An index folder with the model that built it (or `run`, checked to hold the same checkpoint),
        the model on `device`."""
        from embedlab.index.search import open_searcher

        searcher = open_searcher(path, None if run is None else _run_dir_of(run), device)
        return cls(Path(path), searcher)

    @property
    def gallery(self) -> GalleryIndex:
        """The index in memory: its manifest, items (label, path, CSV columns) and vectors."""
        return self._searcher.index

    def __len__(self) -> int:
        return len(self._searcher.index)

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, items={len(self)})"

    def embed(self, images: Any) -> np.ndarray:
        """The images as this index's query vectors (N, D): its model(s), views and whitening."""
        settings = self._searcher.index.manifest.preprocessing
        parts = [self._searcher.embed(b) for b in _batches(images, settings.image_size, settings.channels)]
        if not parts:
            return np.zeros((0, self._searcher.index.manifest.vector_dim), dtype=np.float32)
        return np.concatenate(parts)

    def search(self, images: Any, k: int = 10) -> list[QueryResult]:
        """The top-k gallery items of each image, best first (`.hits`: label, path, score, id), and
        whether it is a new identity when the index has a threshold (`.new_identity`)."""
        queries = self.embed(images)
        return self._searcher.search_embeddings(queries, k) if len(queries) else []

    def add(self, images: str | Path | Sequence[str | Path], *, label: str | None = None) -> int:
        """Embed more images (files, or one folder or CSV) with the index's model and append them, as
        `embedlab index add` does; returns how many were added (files already indexed are skipped)."""
        from embedlab.index.search import Searcher
        from embedlab.pipelines.index import add_to_gallery_index

        result = add_to_gallery_index(self.path, _gallery_sources(images), label=label, progress=False)
        self._searcher = Searcher(result.index, self._searcher.pipeline, self._searcher.index_dir)
        return result.added
