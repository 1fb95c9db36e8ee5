"""From a data config to training images and validation queries and gallery.

Training labels are re-coded to 0..C-1 (classification heads index their weights by them); query and
gallery labels keep the source's codes, so a query matches gallery items of its own identity whether
the gallery is the training set or the validation set itself. The split is seeded and returned as a
record that the run folder keeps (split.json).

A CSV's own `split` column and its `is_query` / `is_gallery` roles win unless the config asks otherwise
in so many words: `data.validation.split` left at `auto` keeps the column; `classes` or `images` given
for such a CSV re-splits it as asked, and `data.gallery: train` searches the training images in place
of the roles, each with a note (DataSplits.notes) that training prints as a warning.

Image files are checked before they are split (data/check.py): every file is decoded once, and missing
or undecodable ones stop the run in one error, or, with `data.skip_unreadable`, are left out of every
split, so that each later `prepare_data` of the same config (evaluation, reports) makes the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embedlab.config import DataConfig, parse_synthetic_dataset
from embedlab.data.builtin import BUILTIN_SETS, SYNTHETIC_CHANNELS, SYNTHETIC_IMAGE_SIZE, make_synthetic
from embedlab.data.check import UnreadableFile, check_files, unreadable_message
from embedlab.data.images import ImageFiles, InMemoryImages, LabelledImages
from embedlab.data.loaders import resolve_num_workers
from embedlab.data.sources import FileSource, read_csv, read_folder

DEFAULT_FILE_IMAGE_SIZE = 224


@dataclass
class DataSplits:
    """Training images, validation queries, and the gallery they search (None: the queries themselves)."""

    train: LabelledImages
    query: LabelledImages
    gallery: LabelledImages | None
    num_classes: int
    class_counts: torch.Tensor
    channels: int
    image_size: int
    record: dict[str, Any] = field(default_factory=dict)
    skipped: list[UnreadableFile] = field(default_factory=list)
    #: what the config explicitly replaced of the CSV's own split and roles, one sentence each
    notes: list[str] = field(default_factory=list)


def concat(parts: list[InMemoryImages], name: str) -> InMemoryImages:
    return InMemoryImages(
        labels=torch.cat([p.labels for p in parts]),
        images=torch.cat([p.images for p in parts]),
        class_names=parts[0].class_names,
        name=name,
    )


def _hold_out_classes(labels: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A mask of the items whose class is held out; at least one class on each side."""
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"holding out classes needs at least 2 classes, found {len(classes)}")
    count = min(max(1, round(fraction * len(classes))), len(classes) - 1)
    held = classes[torch.randperm(len(classes), generator=generator)[:count]]
    return torch.isin(labels, held)


def _hold_out_images(labels: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A mask holding out `fraction` of every class's images (none from a class with one image)."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        count = min(round(fraction * len(members)), len(members) - 1)
        if len(members) >= 2:
            count = max(count, 1)
        if count > 0:
            mask[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    return mask


def _subsample(images: LabelledImages, limit: int | None, generator: torch.Generator) -> LabelledImages:
    if limit is None or len(images) <= limit:
        return images
    chosen = torch.randperm(len(images), generator=generator)[:limit].sort().values
    return images.subset(chosen)


def _checked(
    source: FileSource, collection: str, cfg: DataConfig, progress: bool
) -> tuple[FileSource, list[UnreadableFile]]:
    """The source with its unreadable files left out (data.skip_unreadable), and those files; without
    skip_unreadable, any unreadable file is an error that lists them."""
    workers = resolve_num_workers(cfg.num_workers, feeds_cuda=torch.cuda.is_available())
    found = check_files(source.images, collection, num_workers=workers, progress=progress)
    total = len(source.images)
    if not found.unreadable:
        return source, []
    if not cfg.skip_unreadable:
        raise ValueError(unreadable_message(found.unreadable, total))
    if len(found.unreadable) == total:
        raise ValueError(
            f"{source.images.name}: none of its {total} image files can be used "
            f"({found.unreadable[0].describe()}, ...), so data.skip_unreadable leaves nothing to train on"
        )
    keep = torch.ones(total, dtype=torch.bool)
    keep[[u.position for u in found.unreadable]] = False
    kept = torch.nonzero(keep).flatten()
    split = None if source.split is None else [source.split[i] for i in kept.tolist()]
    return FileSource(images=source.images.subset(kept), split=split), found.unreadable


def _load_source(
    cfg: DataConfig, progress: bool
) -> tuple[LabelledImages, LabelledImages | None, FileSource | None, list[UnreadableFile]]:
    """(all or train images, predefined validation images or None, the file source if any, the files
    left out as unreadable)."""
    if cfg.dataset in BUILTIN_SETS:
        builtin = BUILTIN_SETS[cfg.dataset]()
        return builtin.train, builtin.test, None, []
    synthetic = parse_synthetic_dataset(cfg.dataset)
    if synthetic is not None:
        size, channels = cfg.image_size or SYNTHETIC_IMAGE_SIZE, cfg.channels or SYNTHETIC_CHANNELS
        return make_synthetic(synthetic, size, channels).train, None, None, []
    path = Path(cfg.dataset).expanduser()
    size = cfg.image_size or DEFAULT_FILE_IMAGE_SIZE
    channels = cfg.channels or 3
    if path.suffix.lower() == ".csv":
        root = Path(cfg.root) if cfg.root else None
        source = read_csv(path, size, channels, root)
        collection = f"csv {path.resolve()} root {root.resolve() if root else ''}"
    elif path.is_dir():
        source = read_folder(path, size, channels)
        collection = f"folder {path.resolve()}"
    else:
        raise FileNotFoundError(
            f"data.dataset {cfg.dataset!r} is neither a built-in set ({', '.join(BUILTIN_SETS)}, synthetic), "
            "nor an existing folder, nor a .csv file"
        )
    source, skipped = _checked(source, collection, cfg, progress)
    if source.split is None:
        return source.images, None, source, skipped
    in_train = torch.tensor([s == "train" for s in source.split])
    train = source.images.subset(torch.nonzero(in_train).flatten())
    validation_positions = torch.nonzero(~in_train).flatten()
    if len(validation_positions) == 0:
        raise ValueError(f"{path}: the split column names no validation rows")
    return train, source.images.subset(validation_positions), source, skipped


def prepare_data(cfg: DataConfig, *, progress: bool = False) -> DataSplits:
    """Load the configured dataset, check its image files (progress: show a bar while they are
    decoded), and make its training, query and gallery sets."""
    everything, predefined, source, skipped = _load_source(cfg, progress)
    generator = torch.Generator().manual_seed(cfg.validation.seed)
    mode = cfg.validation.split
    if mode == "auto":
        mode = "predefined" if predefined is not None else "classes"
    if mode == "predefined":
        if predefined is None:
            raise ValueError(
                f"data.validation.split is 'predefined' but {cfg.dataset} has no test split "
                "(a CSV needs a 'split' column); use 'classes' or 'images'"
            )
        train, validation = everything, predefined
    else:
        pool = everything
        if predefined is not None:
            pool = (
                concat([everything, predefined], everything.name)  # type: ignore[list-item]
                if isinstance(everything, InMemoryImages)
                else _concat_files(everything, predefined)
            )
        held = (_hold_out_classes if mode == "classes" else _hold_out_images)(
            pool.labels, cfg.validation.fraction, generator
        )
        train = pool.subset(torch.nonzero(~held).flatten())
        validation = pool.subset(torch.nonzero(held).flatten())

    train = _subsample(train, cfg.max_images_per_split, generator)
    validation = _subsample(validation, cfg.max_images_per_split, generator)

    gallery_mode = cfg.gallery
    if gallery_mode == "auto":
        gallery_mode = "train" if mode == "predefined" and source is None else "validation"
    query, gallery = validation, (train if gallery_mode == "train" else None)
    notes = _override_notes(cfg, source, mode, query if gallery is not None else None)

    train_classes, train_codes = torch.unique(train.labels, return_inverse=True)
    training = train.subset(torch.arange(len(train)), labels=train_codes)
    class_counts = torch.bincount(train_codes, minlength=len(train_classes))
    names = everything.class_names
    record = {
        "dataset": cfg.dataset,
        "validation_split": mode,
        "gallery": gallery_mode,
        "seed": cfg.validation.seed,
        "train_images": len(training),
        "validation_images": len(validation),
        # what is scored: with the validation set searching itself, a CSV's roles pick both sides
        "query_images": _role_count(query.is_query, len(query)) if gallery is None else len(query),
        "gallery_images": len(gallery) if gallery is not None else _role_count(query.is_gallery, len(query)),
        "train_classes": [_name(names, int(c)) for c in train_classes],
        "validation_classes": [_name(names, int(c)) for c in torch.unique(validation.labels)],
        "skipped_unreadable": len(skipped),
    }
    return DataSplits(
        train=training,
        query=query,
        gallery=gallery,
        num_classes=len(train_classes),
        class_counts=class_counts,
        channels=cfg.channels or everything.channels,
        image_size=cfg.image_size or everything.image_size,
        record=record,
        skipped=skipped,
        notes=notes,
    )


def _role_count(role: torch.Tensor | None, total: int) -> int:
    return total if role is None else int(role.sum())


def _override_notes(
    cfg: DataConfig, source: FileSource | None, mode: str, roles_unused: LabelledImages | None
) -> list[str]:
    """A sentence for each part of a CSV's own split and roles that an explicit setting replaced."""
    notes = []
    if source is not None and source.split is not None and mode in ("classes", "images"):
        validation_rows = sum(s != "train" for s in source.split)
        roles = source.images.is_query is not None or source.images.is_gallery is not None
        notes.append(
            f"data.validation.split={mode} re-splits {cfg.dataset} as asked: its split column "
            f"({len(source.split) - validation_rows} train, {validation_rows} validation rows) is not used"
            + (", and its is_query/is_gallery roles apply inside the new validation set" if roles else "")
            + "; drop data.validation.split (or set it to auto) to keep the CSV's own split"
        )
    if roles_unused is not None and (
        roles_unused.is_query is not None or roles_unused.is_gallery is not None
    ):
        notes.append(
            f"data.gallery=train: the is_query/is_gallery roles of {cfg.dataset} are not used; every "
            "validation row is a query searched among the training images; drop data.gallery (or set it "
            "to auto) to score the roles"
        )
    return notes


def _name(names: list[str] | None, code: int) -> str | int:
    return names[code] if names is not None and code < len(names) else code


def _concat_files(first: LabelledImages, second: LabelledImages) -> LabelledImages:
    assert isinstance(first, ImageFiles) and isinstance(second, ImageFiles)

    def join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None or b is None else torch.cat([a, b])

    return ImageFiles(
        labels=torch.cat([first.labels, second.labels]),
        groups=join(first.groups, second.groups),
        is_query=join(first.is_query, second.is_query),
        is_gallery=join(first.is_gallery, second.is_gallery),
        class_names=first.class_names,
        name=first.name,
        paths=first.paths + second.paths,
        size=first.size,
        num_channels=first.num_channels,
        extra=None if first.extra is None or second.extra is None else first.extra + second.extra,
        boxes=None if first.boxes is None or second.boxes is None else first.boxes + second.boxes,
    )
