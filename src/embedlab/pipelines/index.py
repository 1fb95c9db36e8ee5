"""`build_gallery_index` and `add_to_gallery_index`: gallery images -> embeddings -> an index folder.

A gallery is one folder (ROOT/<label>/<image>), one CSV (columns `path`, `label`, any others kept as
item metadata; with an `is_gallery` column only the rows marked true are indexed), or a list of image
files (labelled by `label`, or by their parent folder's name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from embedlab.data.images import ImageFiles
from embedlab.data.sources import IMAGE_SUFFIXES, read_csv, read_folder
from embedlab.embeddings.encoder import EmbeddingPipeline, EnsembleMember
from embedlab.index.gallery import GalleryIndex, GalleryItem
from embedlab.index.manifest import (
    CheckpointName,
    FaissRecord,
    IndexManifest,
    ModelRecord,
    PostprocessingRecord,
    PreprocessingRecord,
    RequestedKind,
    SourceRecord,
    choose_kind,
    utc_now,
)
from embedlab.index.search import Searcher, checkpoint_sha256, load_pipeline
from embedlab.index.shards import FaissSettings
from embedlab.index.store import check_writable, load_index, write_index, writer_lock
from embedlab.models.devices import resolve_device
from embedlab.models.tta import TestTimeAugmentation
from embedlab.retrieval.postprocessing import StepConfig, Whiten, build_steps, prepare_gallery
from embedlab.training.run_dir import LoadedRun, load_run
from embedlab.versions import package_versions


@dataclass
class Gallery:
    """Images to embed (read at the model's size) and their items, in the same order."""

    images: ImageFiles
    items: list[GalleryItem]
    source: str


def _image_files(paths: Sequence[Path], image_size: int, channels: int, label: str | None) -> Gallery:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"{path} is not an image file (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}); give one "
                "folder, one CSV, or image files"
            )
    labels = [label or path.absolute().parent.name for path in paths]
    names = sorted(set(labels))
    images = ImageFiles(
        labels=torch.tensor([names.index(name) for name in labels], dtype=torch.long),
        class_names=names,
        name=f"{len(paths)} image files",
        paths=[path.resolve() for path in paths],
        size=image_size,
        num_channels=channels,
    )
    items = [GalleryItem(str(p), name) for p, name in zip(images.paths, labels, strict=True)]
    return Gallery(images, items, images.name)


def read_gallery(
    sources: Sequence[Path], image_size: int, channels: int, label: str | None = None
) -> Gallery:
    """One folder, one CSV, or image files, as images to embed and their gallery items."""
    if not sources:
        raise ValueError("no gallery given: pass a folder, a CSV, or image files")
    first = sources[0]
    if len(sources) > 1 or first.suffix.lower() in IMAGE_SUFFIXES:
        return _image_files(sources, image_size, channels, label)
    if label is not None:
        raise ValueError("--label applies to image files; a folder or CSV brings its own labels")
    if first.suffix.lower() == ".csv":
        images = read_csv(first, image_size, channels).images
        if images.is_gallery is not None:
            images = images.subset(torch.nonzero(images.is_gallery).flatten())
    elif first.is_dir():
        images = read_folder(first, image_size, channels).images
    else:
        raise FileNotFoundError(f"gallery {first} is neither a folder, a .csv file, nor an image file")
    names = images.class_names or []
    images.paths = [path.resolve() for path in images.paths]
    extras = images.extra or [{} for _ in images.paths]
    items = [
        GalleryItem(str(path), names[code], extra)
        for path, code, extra in zip(images.paths, images.labels.tolist(), extras, strict=True)
    ]
    return Gallery(images, items, str(first.resolve()))


def _model_record(run: LoadedRun, which: CheckpointName, weight: float = 1.0) -> ModelRecord:
    return ModelRecord(
        run_dir=str(run.run_dir.resolve()),
        checkpoint=which,
        checkpoint_sha256=checkpoint_sha256(run.checkpoint_path),
        backbone=run.config.model.backbone,
        embedding_dim=run.embedder.embedding_dim,
        weight=weight,
    )


def new_manifest(run: LoadedRun, which: CheckpointName, kind: RequestedKind, n_items: int) -> IndexManifest:
    """The manifest of a new index over n_items embedded by `run`'s checkpoint `which`."""
    preprocess = run.embedder.preprocess
    now = utc_now()
    return IndexManifest(
        created_at=now,
        updated_at=now,
        versions=package_versions(),
        model=_model_record(run, which),
        preprocessing=PreprocessingRecord(
            channels=preprocess.channels,  # type: ignore[arg-type]  # an int; pydantic checks it is 1 or 3
            image_size=preprocess.size,
            mean=[float(v) for v in preprocess.mean.tolist()],
            std=[float(v) for v in preprocess.std.tolist()],
        ),
        faiss=FaissRecord(kind=choose_kind(kind, n_items), requested_kind=kind),
    )


#: The post-processing steps an index can hold: those with a gallery side or a query side at search time.
INDEX_STEPS = ("whiten", "dba", "qe")


@dataclass(frozen=True)
class IndexSteps:
    """What an index adds to its model: ensemble members, test-time views, and post-processing steps
    (whiten, learned on the gallery; dba, applied to the gallery; qe, applied to each query)."""

    ensemble: Sequence[EnsembleMember] = ()
    tta: TestTimeAugmentation | None = None
    postprocessing: Sequence[StepConfig] = ()

    def __post_init__(self) -> None:
        for config in self.postprocessing:
            if config.name not in INDEX_STEPS:
                raise ValueError(
                    f"an index holds the post-processing steps {', '.join(INDEX_STEPS)}, not {config.name!r}"
                )
            if config.name == "whiten" and config.args.get("fit_on", "gallery") != "gallery":
                raise ValueError("an index learns its whitening on its gallery (fit_on: gallery)")

    def record(self) -> PostprocessingRecord:
        return PostprocessingRecord(
            tta_flip=self.tta is not None and self.tta.flip,
            tta_scales=[1.0] if self.tta is None else list(self.tta.scales),
            steps=[step.config() for step in build_steps(self.postprocessing)],
        )


def build_gallery_index(
    run_dir: str | Path,
    gallery: Sequence[Path],
    out: str | Path,
    *,
    kind: RequestedKind = "auto",
    checkpoint: CheckpointName = "best",
    label: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    progress: bool = True,
    steps: IndexSteps | None = None,
    faiss: FaissSettings | None = None,
    device: str = "auto",
) -> GalleryIndex:
    """Embed a gallery with a run's checkpoint (and the `steps`: ensemble members, test-time views, the
    gallery side of the post-processing steps) on `device` and write the index folder `out`
    (atomically)."""
    out = Path(out)
    steps = steps or IndexSteps()
    check_writable(out, replace=force)
    run = load_run(run_dir, checkpoint)
    members = [(load_run(member.run_dir, checkpoint), member.weight) for member in steps.ensemble]
    pipeline = EmbeddingPipeline(
        embedders=[run.embedder] + [member.embedder for member, _ in members],
        weights=[1.0] + [weight for _, weight in members],
        tta=steps.tta,
        precision=run.config.train.precision,
    ).to(resolve_device(device))
    data = read_gallery(gallery, run.embedder.preprocess.size, run.embedder.preprocess.channels, label)
    batch = batch_size or run.config.train.eval_batch_size
    postprocessing = build_steps(steps.postprocessing)
    embeddings = prepare_gallery(
        postprocessing, pipeline.embed_images(data.images, batch, run.config.data.num_workers, progress)
    )
    whitening = next((step.whitening for step in postprocessing if isinstance(step, Whiten)), None)
    manifest = new_manifest(run, checkpoint, kind, len(data.items))
    manifest.faiss = (faiss or FaissSettings()).applied_to(manifest.faiss)
    manifest.ensemble = [_model_record(member, checkpoint, weight) for member, weight in members]
    manifest.postprocessing = steps.record()
    manifest.sources = [SourceRecord(source=data.source, items=len(data.items), added_at=manifest.created_at)]
    index = GalleryIndex.create(manifest, data.items, embeddings, whitening)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out):  # an `add` under way finishes first; this index then replaces what it wrote
        write_index(index, out, replace=force)
    return index


@dataclass
class AddResult:
    index: GalleryIndex
    added: int
    skipped: int


def add_to_gallery_index(
    index_dir: str | Path,
    images: Sequence[Path],
    *,
    run_dir: str | Path | None = None,
    label: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    device: str = "auto",
) -> AddResult:
    """Embed more images with the index's own model (on `device`) and append them; files already indexed (same
    resolved path) are skipped, so running the same `add` twice adds nothing the second time.

    The index's writers' lock is held from reading the index to writing it, so concurrent adds (and
    calibrations) run one after another, each on what the previous one wrote: none loses the others'
    images, and adds of the same files add them once."""
    index_dir = Path(index_dir)
    with writer_lock(index_dir):
        index = load_index(index_dir)
        if index.manifest.postprocessing.step("dba") is not None:
            raise ValueError(
                f"index {index_dir} was built with database-side augmentation, where every gallery vector "
                "depends on its neighbours: adding images would leave the others stale; rebuild it with "
                "`embedlab index build ... --force` over the whole gallery"
            )
        run, pipeline = load_pipeline(index.manifest, index_dir.absolute(), run_dir, device)
        searcher = Searcher(index, pipeline, index_dir.absolute())
        settings = index.manifest.preprocessing
        data = read_gallery(images, settings.image_size, settings.channels, label)
        known = {item.path for item in index.items}
        fresh = [i for i, item in enumerate(data.items) if item.path not in known]
        skipped = len(data.items) - len(fresh)
        if not fresh:
            return AddResult(index, 0, skipped)
        subset = data.images.subset(torch.tensor(fresh, dtype=torch.long))
        batch = batch_size or run.config.train.eval_batch_size
        embeddings = searcher.embed_images(subset, batch, run.config.data.num_workers, progress)
        source = SourceRecord(source=data.source, items=len(fresh), added_at=utc_now())
        grown = index.extended([data.items[i] for i in fresh], embeddings, source)
        write_index(grown, index_dir, replace=True)
        return AddResult(grown, len(fresh), skipped)
