"""The items an audit describes: every readable image of a collection, with its identity, its split
and its validation roles, as training reads them (`prepare_data`).

Items are the training images first, then the validation images, each in the order of the source. An
item's `key` (its absolute path, and its bounding box when the CSV gives one) names it across commands: a
findings CSV lists keys, and `embedlab evaluate --exclude-audit` holds those items out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedlab.data.images import Box, ImageFiles, LabelledImages
from embedlab.data.splits import DataSplits

TRAIN = "train"
VALIDATION = "validation"


def item_key(path: str | Path, box: Box | None) -> str:
    """The file's absolute path (links resolved, so that a run's config and an audit that name the
    folder differently agree), with `#x_1,y_1,x_2,y_2` for an item cropped to a box (one file may hold
    several)."""
    resolved = str(Path(path).resolve())
    return resolved if box is None else f"{resolved}#{','.join(str(v) for v in box)}"


@dataclass(frozen=True)
class AuditItems:
    """One row per item. labels: int codes into `label_names`; split: TRAIN or VALIDATION; is_query /
    is_gallery: the item's validation roles (a training image is a gallery item only when the
    validation queries search the training images). `train` and `validation` are the collections the
    items come from, for embedding."""

    paths: list[Path]
    boxes: list[Box | None]
    labels: np.ndarray
    label_names: list[str]
    split: np.ndarray
    is_query: np.ndarray
    is_gallery: np.ndarray
    train: ImageFiles
    validation: ImageFiles
    validation_searches_train: bool

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_train(self) -> int:
        return len(self.train)

    def key(self, item: int) -> str:
        return item_key(self.paths[item], self.boxes[item])

    def label(self, item: int) -> str:
        return self.label_names[int(self.labels[item])]

    def role(self, item: int) -> str:
        """query, gallery, query+gallery, or "" for an item that validation does not score."""
        roles = [
            name for name, flag in (("query", self.is_query), ("gallery", self.is_gallery)) if flag[item]
        ]
        return "+".join(roles)


def _flags(values: object, count: int) -> np.ndarray:
    return np.ones(count, dtype=bool) if values is None else values.numpy().astype(bool)  # type: ignore[attr-defined]


def items_from_splits(splits: DataSplits) -> AuditItems:
    """The item table of a file collection's splits (a built-in set has no files to audit)."""
    train, validation = splits.train, splits.query
    if not isinstance(train, ImageFiles) or not isinstance(validation, ImageFiles):
        raise ValueError("an audit reads image files: give a folder of identities or a CSV")
    train_names = [str(name) for name in splits.record["train_classes"]]
    source_names = validation.class_names or []
    names = [train_names[int(code)] for code in train.labels] + [
        str(source_names[int(code)]) if int(code) < len(source_names) else str(int(code))
        for code in validation.labels
    ]
    label_names, labels = np.unique(np.array(names, dtype=object).astype(str), return_inverse=True)
    n_train, n_validation = len(train), len(validation)
    searches_train = splits.gallery is not None
    if searches_train:
        is_query = np.concatenate([np.zeros(n_train, bool), np.ones(n_validation, bool)])
        is_gallery = np.concatenate([np.ones(n_train, bool), np.zeros(n_validation, bool)])
    else:
        is_query = np.concatenate([np.zeros(n_train, bool), _flags(validation.is_query, n_validation)])
        is_gallery = np.concatenate([np.zeros(n_train, bool), _flags(validation.is_gallery, n_validation)])
    return AuditItems(
        paths=[Path(p) for p in train.paths + validation.paths],
        boxes=[train.box(i) for i in range(n_train)] + [validation.box(i) for i in range(n_validation)],
        labels=labels.astype(np.int64),
        label_names=[str(name) for name in label_names],
        split=np.array([TRAIN] * n_train + [VALIDATION] * n_validation),
        is_query=is_query,
        is_gallery=is_gallery,
        train=train,
        validation=validation,
        validation_searches_train=searches_train,
    )


def without_items(images: LabelledImages, keys: set[str]) -> tuple[LabelledImages, int]:
    """The collection less its items whose key (`item_key`) is in `keys`, and how many were held out;
    a collection held in memory has no keys, so it comes back whole."""
    if not isinstance(images, ImageFiles) or not keys:
        return images, 0
    keep = [i for i in range(len(images)) if item_key(images.paths[i], images.box(i)) not in keys]
    return images.subset(torch.tensor(keep, dtype=torch.long)), len(images) - len(keep)
