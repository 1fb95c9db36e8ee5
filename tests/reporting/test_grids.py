"""Retrieval grids: which queries are shown, and that each tile holds the right image in the right frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import ImageColor

from embedlab.data.images import InMemoryImages
from embedlab.reporting.grids import (
    CORRECT,
    FRAME,
    QUERY,
    TILE,
    WRONG,
    check_images_match,
    retrieval_grid,
    sample_queries,
    tile_origin,
    worst_queries,
)
from embedlab.training.snapshot import RetrievalSnapshot


def _snapshot(neighbour_labels, neighbour_index=None, query_labels=None, n_positives=None, top1=None):
    neighbour_labels = np.asarray(neighbour_labels)
    n, k = neighbour_labels.shape
    similarity = np.tile(np.linspace(0.9, 0.5, k, dtype=np.float32), (n, 1))
    if top1 is not None:
        similarity[:, 0] = top1
    return RetrievalSnapshot(
        query_index=np.arange(n),
        query_labels=np.zeros(n, dtype=np.int64) if query_labels is None else np.asarray(query_labels),
        query_embeddings=np.zeros((n, 2), dtype=np.float16),
        n_positives=np.full(n, 3) if n_positives is None else np.asarray(n_positives),
        neighbour_index=np.arange(n * k).reshape(n, k)
        if neighbour_index is None
        else np.asarray(neighbour_index),
        neighbour_labels=neighbour_labels,
        neighbour_similarity=similarity,
        gallery_is_query=False,
        epoch=0,
    )


def test_worst_queries_have_fewest_hits_then_a_later_first_hit_then_a_more_confident_mistake() -> None:
    snap = _snapshot(
        [
            [0, 0, 0],  # 3 hits
            [1, 0, 1],  # 1 hit at rank 2
            [1, 1, 0],  # 1 hit at rank 3
            [1, 1, 1],  # no hit, top-1 similarity 0.6
            [1, 1, 1],  # no hit, top-1 similarity 0.8: the more confident mistake
            [1, 1, 1],  # no hit, but no positive to find either: never shown
        ],
        n_positives=[3, 3, 3, 3, 3, 0],
        top1=[0.9, 0.9, 0.9, 0.6, 0.8, 0.99],
    )
    assert worst_queries(snap, 5, k=3).tolist() == [4, 3, 2, 1, 0]
    # Only the top 1 counts: rows 1 to 4 all miss it, rows 1 and 2 with the most confidence (0.9).
    assert worst_queries(snap, 2, k=1).tolist() == [1, 2]
    drawn = sample_queries(snap, 10)
    assert drawn.tolist() == [0, 1, 2, 3, 4]
    assert sample_queries(snap, 3, seed=1).tolist() == sample_queries(snap, 3, seed=1).tolist()


def _images(values, labels) -> InMemoryImages:
    """Item i is a flat grey image of value values[i], so a tile shows which item it holds."""
    pixels = torch.tensor(values, dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 6, 6).clone()
    return InMemoryImages(labels=torch.as_tensor(labels), images=pixels, class_names=["cat", "dog"])


def _rgb(name: str) -> tuple[int, int, int]:
    return ImageColor.getrgb(name)[:3]


def test_tiles_hold_the_query_and_its_results_framed_by_whether_the_label_matches() -> None:
    query = _images([10, 20], [0, 1])
    gallery = _images([100, 110, 120, 130], [0, 1, 1, 0])
    snap = _snapshot(
        neighbour_labels=[[0, 1, 0], [1, 0, -1]],
        neighbour_index=[[0, 1, 3], [2, 0, -1]],
        query_labels=[0, 1],
    )
    grid = retrieval_grid(snap, [0, 1], query, gallery, k=3, title="t").convert("RGB")

    def frame(row: int, column: int) -> tuple[int, int, int]:
        x, y = tile_origin(row, column)
        return grid.getpixel((x + 1, y + 1))

    def centre(row: int, column: int) -> int:
        x, y = tile_origin(row, column)
        return grid.getpixel((x + FRAME + TILE // 2, y + FRAME + TILE // 2))[0]

    assert [frame(0, c) for c in range(4)] == [_rgb(QUERY), _rgb(CORRECT), _rgb(WRONG), _rgb(CORRECT)]
    assert [centre(0, c) for c in range(4)] == [10, 100, 110, 130]
    assert [frame(1, c) for c in range(3)] == [_rgb(QUERY), _rgb(CORRECT), _rgb(WRONG)]
    assert [centre(1, c) for c in range(3)] == [20, 120, 100]
    assert frame(1, 3) == (255, 255, 255)  # no third result: the tile stays empty


def test_images_that_no_longer_match_the_snapshot_are_refused() -> None:
    query = _images([10, 20], [0, 1])
    gallery = _images([100, 110, 120, 130], [0, 1, 1, 0])
    snap = _snapshot(neighbour_labels=[[0, 1], [1, 0]], neighbour_index=[[0, 1], [2, 3]], query_labels=[0, 1])
    check_images_match(snap, query, gallery)
    with pytest.raises(ValueError, match="queries no longer match"):
        check_images_match(snap, _images([10, 20], [1, 1]), gallery)
    with pytest.raises(ValueError, match="gallery no longer matches"):
        check_images_match(snap, query, _images([100, 110], [0, 1]))
