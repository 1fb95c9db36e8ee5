"""Batches for training and embedding: a batch sampler drives a dataset that returns whole batches.

The loader runs with `batch_size=None`: each element the sampler yields is a list of indices, and the
dataset answers it with a stacked batch, so in-memory sets never collate one image at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from embedlab.data.images import InMemoryImages, LabelledImages


class SeededRandomSampler(Sampler[int]):
    """A random order fixed by (seed, epoch), so a resumed run draws the batches it would have drawn."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class EpochBatchSampler(BatchSampler):
    """A batch sampler that passes the trainer's `set_epoch` on to the sampler it wraps."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def train_batches(
    images: LabelledImages,
    batch_size: int,
    seed: int,
    m_per_class: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """Shuffled training batches, or batches of m images per class (pytorch-metric-learning's sampler)."""
    sampler: Sampler[int]
    if m_per_class is not None:
        if batch_size % m_per_class:
            raise ValueError(
                f"train.batch_size ({batch_size}) must be a multiple of data.m_per_class ({m_per_class})"
            )
        classes = int(torch.unique(images.labels).numel())
        if batch_size // m_per_class > classes:
            raise ValueError(
                f"a batch of {batch_size} with m_per_class={m_per_class} needs {batch_size // m_per_class} "
                f"classes, the training set has {classes}"
            )
        sampler = MPerClassSampler(
            images.labels.numpy(), m=m_per_class, batch_size=batch_size, length_before_new_iter=len(images)
        )
    else:
        sampler = SeededRandomSampler(len(images), seed)
    batches = EpochBatchSampler(sampler, batch_size=batch_size, drop_last=True)
    if len(batches) == 0:
        raise ValueError(f"the training set ({len(images)} images) is smaller than one batch ({batch_size})")
    return _loader(images, batches, num_workers)


def eval_batches(images: LabelledImages, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches in dataset order, for embedding."""
    batches = BatchSampler(SequentialSampler(range(len(images))), batch_size=batch_size, drop_last=False)
    return _loader(images, batches, num_workers)


def _loader(images: LabelledImages, batches: BatchSampler, num_workers: int) -> DataLoader:
    in_memory = isinstance(images, InMemoryImages)
    return DataLoader(
        images,
        sampler=batches,
        batch_size=None,
        num_workers=0 if in_memory else num_workers,
        persistent_workers=not in_memory and num_workers > 0,
    )
