"""Image files from a folder per identity or from a CSV (open-metric-learning's columns).

Folder: `ROOT/<label>/<image>`, one sub-folder per identity. CSV: columns `path` and `label`, optional
`split` (train | validation), `is_query`, `is_gallery` (validation roles) and `group` (items hidden from
each other, such as photos of one sighting), and `x_1, y_1, x_2, y_2` (a bounding box in pixels: the
image is cropped to it wherever it is read, as open-metric-learning does); relative paths start at
`root` or the CSV's folder.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from embedlab.data.images import Box, ImageFiles

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
REQUIRED_CSV_COLUMNS = ("path", "label")
BOX_COLUMNS = ("x_1", "y_1", "x_2", "y_2")
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "test": "validation"}


@dataclass
class FileSource:
    """All files of a source, with the CSV's split column when it has one."""

    images: ImageFiles
    split: list[str] | None = None


def _encode(values: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Label strings -> int64 codes in sorted order of the names (numbers sort numerically)."""

    def order(name: str) -> tuple[int, float | str]:
        try:
            return (0, float(name))
        except ValueError:
            return (1, name)

    names = sorted(set(values), key=order)
    code = {name: i for i, name in enumerate(names)}
    return torch.tensor([code[v] for v in values], dtype=torch.long), names


def read_folder(root: Path, image_size: int, channels: int) -> FileSource:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    paths: list[Path] = []
    names: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                names.append(class_dir.name)
    if not paths:
        raise ValueError(
            f"image folder {root} holds no images in sub-folders; expected ROOT/<label>/<image> "
            f"with suffixes {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    labels, class_names = _encode(names)
    images = ImageFiles(
        labels=labels,
        class_names=class_names,
        name=str(root),
        paths=paths,
        size=image_size,
        num_channels=channels,
    )
    return FileSource(images=images)


def _flag(value: str, path: Path, row: int, column: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "t", "y"}:
        return True
    if lowered in {"0", "false", "no", "f", "n", ""}:
        return False
    raise ValueError(f"{path}, row {row}: column {column!r} must be true/false or 1/0, got {value!r}")


def row_numbers(numbers: list[int], shown: int = 10) -> str:
    """'2, 5, 9' or '2, 5, 9, ... (40 rows)' for an error message."""
    listed = ", ".join(str(n) for n in numbers[:shown])
    return listed if len(numbers) <= shown else f"{listed}, ... ({len(numbers)} rows)"


def _refuse_empty(path: Path, rows: list[dict[str, str]], column: str) -> None:
    # csv.DictReader gives None for the cells of a short row.
    empty = [n for n, r in enumerate(rows, start=2) if not (r.get(column) or "").strip()]
    if empty:
        raise ValueError(
            f"CSV file {path}: the {column!r} column is empty in row(s) {row_numbers(empty)} "
            "(rows counted from the header, 1); fill them in or remove those rows"
        )


def _boxes(path: Path, rows: list[dict[str, str]], columns: Sequence[str]) -> list[Box | None] | None:
    """Each row's bounding box from open-metric-learning's x_1, y_1, x_2, y_2 columns (pixels; a row
    with the four cells empty has none), or None when the CSV has no such columns."""
    present = [c for c in BOX_COLUMNS if c in columns]
    if not present:
        return None
    if len(present) < len(BOX_COLUMNS):
        missing = ", ".join(c for c in BOX_COLUMNS if c not in columns)
        raise ValueError(
            f"CSV file {path} has bounding-box columns but lacks {missing}; give all of x_1, y_1, x_2, y_2"
        )
    boxes: list[Box | None] = []
    for number, row in enumerate(rows, start=2):
        cells = [(row.get(c) or "").strip() for c in BOX_COLUMNS]
        if not any(cells):
            boxes.append(None)
            continue
        try:
            x_1, y_1, x_2, y_2 = (round(float(cell)) for cell in cells)
        except ValueError:
            raise ValueError(
                f"{path}, row {number}: the box x_1, y_1, x_2, y_2 must be four numbers, got {cells}"
            ) from None
        if x_2 <= x_1 or y_2 <= y_1:
            raise ValueError(
                f"{path}, row {number}: the box needs x_1 < x_2 and y_1 < y_2, got {(x_1, y_1, x_2, y_2)}"
            )
        boxes.append((x_1, y_1, x_2, y_2))
    return boxes


def read_csv(path: Path, image_size: int, channels: int, root: Path | None = None) -> FileSource:
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_CSV_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"CSV file {path} lacks the column(s) {', '.join(missing)}; it has: {', '.join(columns)}"
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"CSV file {path} has no rows")
    _refuse_empty(path, rows, "label")
    _refuse_empty(path, rows, "path")
    base = root or path.parent
    paths = [Path(r["path"]) if Path(r["path"]).is_absolute() else base / r["path"] for r in rows]
    labels, class_names = _encode([r["label"] for r in rows])
    groups = None
    if "group" in columns:
        groups, _ = _encode([r["group"] for r in rows])
    split = None
    if "split" in columns:
        split = []
        for number, r in enumerate(rows, start=2):
            value = r["split"].strip().lower()
            if value not in SPLIT_NAMES:
                raise ValueError(
                    f"{path}, row {number}: split must be one of {', '.join(SPLIT_NAMES)}, got {r['split']!r}"
                )
            split.append(SPLIT_NAMES[value])
    roles: dict[str, torch.Tensor | None] = {"is_query": None, "is_gallery": None}
    for column in roles:
        if column in columns:
            flags = [_flag(r[column], path, n, column) for n, r in enumerate(rows, start=2)]
            roles[column] = torch.tensor(flags, dtype=torch.bool)
    boxes = _boxes(path, rows, columns)
    known = {"path", "label", "split", "is_query", "is_gallery", "group"}
    extra = [{k: v for k, v in r.items() if k not in known} for r in rows]
    images = ImageFiles(
        labels=labels,
        groups=groups,
        is_query=roles["is_query"],
        is_gallery=roles["is_gallery"],
        class_names=class_names,
        name=str(path),
        paths=paths,
        size=image_size,
        num_channels=channels,
        extra=extra,
        boxes=boxes,
    )
    return FileSource(images=images, split=split)
