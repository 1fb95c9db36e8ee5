"""Embedding a collection: the same vectors whatever the batch, smaller parts when memory runs out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedlab.config import ModelConfig
from embedlab.data.images import InMemoryImages
from embedlab.models import build_embedder
from embedlab.models.inference import BatchSplitter, embed


def _images(n: int = 10) -> InMemoryImages:
    pixels = torch.randint(
        0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return InMemoryImages(labels=torch.arange(n) % 3, images=pixels)


def _embedder():
    torch.manual_seed(0)
    return build_embedder(ModelConfig(embedding_dim=8), channels=1, image_size=8).eval()


class SmallDevice:
    """Wraps an embedder's forward: more than `capacity` images at once is out of memory, as on a GPU."""

    def __init__(self, embedder: torch.nn.Module, capacity: int) -> None:
        self.embedder, self.capacity, self.sizes = embedder, capacity, []
        self.forward = embedder.forward

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        if len(batch) > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.forward(batch)


def test_out_of_memory_embeds_the_batch_again_in_halves_and_keeps_the_smaller_size(caplog) -> None:
    embedder = _embedder()
    data = _images(10)
    expected = embed(embedder, data, batch_size=10)
    device = SmallDevice(embedder, capacity=3)
    embedder.forward = device
    with caplog.at_level("WARNING", logger="embedlab.models.inference"):
        vectors = embed(embedder, data, batch_size=10)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    # 10 fails, 5 fails, 2 fits and stays the size: 2, 2, 2, 2, 2
    assert device.sizes == [10, 5, 2, 2, 2, 2, 2]
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory on cpu embedding 10 images at once; going on with 5",
        "out of memory on cpu embedding 5 images at once; going on with 2",
    ]


def test_out_of_memory_on_one_image_is_raised() -> None:
    def never_fits(batch: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        BatchSplitter(never_fits, 4)(torch.zeros(4, 1))


def test_a_bf16_run_embeds_under_autocast_close_to_fp32() -> None:
    embedder = _embedder()
    data = _images(6)
    full = embed(embedder, data, batch_size=4)
    mixed = embed(embedder, data, batch_size=4, precision="bf16-mixed")
    assert mixed.dtype == np.float32 and not np.array_equal(mixed, full)
    cosines = (mixed * full).sum(axis=1) / np.linalg.norm(mixed, axis=1) / np.linalg.norm(full, axis=1)
    assert cosines.min() > 0.99
