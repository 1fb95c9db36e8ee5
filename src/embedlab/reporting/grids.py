"""Retrieval grids: a query image, then its top-k results framed green (same label) or red (not).

The rows come from a run's retrieval snapshot (training/snapshot.py), so no gallery is embedded again;
only the images shown are read, from the run's own data config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from embedlab.training.snapshot import RetrievalSnapshot

if TYPE_CHECKING:
    import torch

    from embedlab.data.images import LabelledImages

CORRECT = "#1a9641"
WRONG = "#d7191c"
QUERY = "#2b5d9c"

# Grid geometry in pixels: image side, frame width, gap between columns, caption band under a tile,
# title band, outer margin.
TILE = 80
FRAME = 4
GAP = 8
CAPTION = 30
TITLE = 28
MARGIN = 8
_CAPTION_CHARS = 15


def scorable(snapshot: RetrievalSnapshot) -> np.ndarray:
    """Snapshot rows of the queries with at least one positive to find (others cannot be right)."""
    rows = np.flatnonzero(snapshot.n_positives > 0)
    return rows if rows.size else np.arange(snapshot.query_labels.size)


def sample_queries(snapshot: RetrievalSnapshot, count: int, seed: int = 0) -> np.ndarray:
    """`count` snapshot rows drawn at random (fixed seed) from the scorable queries, in row order."""
    rows = scorable(snapshot)
    chosen = np.random.default_rng(seed).choice(rows, size=min(count, rows.size), replace=False)
    return np.sort(chosen)


def worst_queries(snapshot: RetrievalSnapshot, count: int, k: int) -> np.ndarray:
    """The `count` scorable queries that did worst in their top k, worst first.

    Order: fewest correct results in the top k; then the latest first correct result (none counts as
    k + 1); then the most confident mistake (highest top-1 similarity) first; then row order.
    """
    rows = scorable(snapshot)
    correct = snapshot.correct[rows, :k]
    hits = correct.sum(axis=1)
    first = np.where(correct.any(axis=1), correct.argmax(axis=1) + 1, k + 1)
    confidence = snapshot.neighbour_similarity[rows, 0]
    order = np.lexsort((rows, -confidence, -first, hits))
    return rows[order[:count]]


def label_name(label: int, class_names: Sequence[str] | None) -> str:
    return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def check_images_match(snapshot: RetrievalSnapshot, query: LabelledImages, gallery: LabelledImages) -> None:
    """The data read for the report must be the data the run scored: same sizes and labels."""
    labels = query.labels.numpy()
    if snapshot.query_index.max(initial=-1) >= len(labels) or not np.array_equal(
        labels[snapshot.query_index], snapshot.query_labels
    ):
        raise ValueError(
            "the run's validation queries no longer match its retrieval snapshot (has the dataset "
            "changed since the run was trained?)"
        )
    found = snapshot.neighbour_index >= 0
    if snapshot.neighbour_index.max(initial=-1) >= len(gallery) or not np.array_equal(
        gallery.labels.numpy()[snapshot.neighbour_index[found]], snapshot.neighbour_labels[found]
    ):
        raise ValueError("the run's gallery no longer matches its retrieval snapshot")


def tile_origin(row: int, column: int) -> tuple[int, int]:
    """(x, y) pixel of the top-left corner of a tile's frame in a grid image."""
    return (MARGIN + column * (TILE + 2 * FRAME + GAP), TITLE + row * (TILE + 2 * FRAME + CAPTION))


def _tile(image: torch.Tensor) -> Image.Image:
    """A (C, H, W) uint8 image as an RGB tile of TILE x TILE pixels (nearest when enlarging keeps
    small images sharp)."""
    pixels = image.numpy()
    picture = (
        Image.fromarray(pixels[0])
        if pixels.shape[0] == 1
        else Image.fromarray(np.moveaxis(pixels[:3], 0, -1))
    )
    larger = max(picture.size) < TILE
    return picture.convert("RGB").resize(
        (TILE, TILE), Image.Resampling.NEAREST if larger else Image.Resampling.LANCZOS
    )


def _caption(
    draw: ImageDraw.ImageDraw,
    x: int,
    y: int,
    lines: Sequence[str],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    width = TILE + 2 * FRAME
    for number, line in enumerate(lines):
        text = line if len(line) <= _CAPTION_CHARS else line[: _CAPTION_CHARS - 1] + "…"
        draw.text((x + width / 2, y + 2 + 12 * number), text, fill="#1d2330", font=font, anchor="ma")


def retrieval_grid(
    snapshot: RetrievalSnapshot,
    rows: Sequence[int],
    query: LabelledImages,
    gallery: LabelledImages,
    k: int,
    title: str,
) -> Image.Image:
    """An image with one line per snapshot row: the query (blue frame), then its top k results framed
    green (same label) or red.

    query / gallery: the run's validation query set and the set it searched (the query set itself when
    `snapshot.gallery_is_query`). Captions: the query's label and R (positives in its gallery), each
    result's label and cosine similarity. Drawn with Pillow: as matplotlib axes, a few hundred tiles
    took seconds to lay out.
    """
    k = min(k, snapshot.neighbour_index.shape[1])
    names = query.class_names
    right, bottom = tile_origin(len(rows), k + 1)
    canvas = Image.new("RGB", (right - GAP + MARGIN, bottom + MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    draw.text((MARGIN, 6), title, fill="#1d2330", font=ImageFont.load_default(size=13))
    for line, row in enumerate(rows):
        label = int(snapshot.query_labels[row])
        cells = [
            (
                query[int(snapshot.query_index[row])][0],
                QUERY,
                [label_name(label, names), f"query, R = {int(snapshot.n_positives[row])}"],
            )
        ]
        for column in range(k):
            index = int(snapshot.neighbour_index[row, column])
            if index < 0:
                break
            result = int(snapshot.neighbour_labels[row, column])
            similarity = f"{snapshot.neighbour_similarity[row, column]:.3f}"
            cells.append(
                (
                    gallery[index][0],
                    CORRECT if result == label else WRONG,
                    [label_name(result, names), similarity],
                )
            )
        for column, (image, frame, caption) in enumerate(cells):
            x, y = tile_origin(line, column)
            draw.rectangle((x, y, x + TILE + 2 * FRAME - 1, y + TILE + 2 * FRAME - 1), fill=frame)
            canvas.paste(_tile(image), (x + FRAME, y + FRAME))
            _caption(draw, x, y + TILE + 2 * FRAME, caption, font)
    return canvas
