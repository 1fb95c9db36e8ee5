"""Batches for training and embedding: a batch sampler drives a dataset that returns whole batches.

The loader runs with `batch_size=None`: each element the sampler yields is a list of indices, and the
dataset answers it with a stacked batch, so in-memory sets never collate one image at a time.

Training batches are global: `train.batch_size` images per optimisation step whatever the number of
processes. Every process draws the same global batches, a function of (seed, epoch) only, and keeps its
own slice of each (every W-th row), so under DDP the processes together see exactly the batch one process
would, none sees another's rows, and a resumed run draws the batches it would have drawn.

Feeding a CUDA GPU, batches come in pinned memory (so the copy to the device overlaps the step) from
`data.num_workers` processes that live as long as the loader; left unset, the number of workers is
min(MAX_DEFAULT_WORKERS, CPU cores - 1) there and 0 on a CPU-only run, whose cores do torch's work.
In-memory sets are indexed in the main process whatever the setting: a batch is one tensor index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from embedlab.data.augmentation import AugmentedImages
from embedlab.data.images import InMemoryImages, LabelledImages

#: The most loader processes the default starts: more rarely help and each holds a copy of the dataset.
MAX_DEFAULT_WORKERS = 8


def _usable_cpu_count() -> int:
    # The cores this process may run on (a container or taskset may allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(num_workers: int | None, *, feeds_cuda: bool) -> int:
    """`data.num_workers` as given, or its default: min(MAX_DEFAULT_WORKERS, CPU cores - 1) when the
    batches feed a CUDA GPU (one core stays with the training process), else 0."""
    if num_workers is not None:
        return num_workers
    if not feeds_cuda:
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, _usable_cpu_count() - 1))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch: the same (seed, epoch) always gives the same draws."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class SeededRandomSampler(Sampler[int]):
    """A random order fixed by (seed, epoch), so a resumed run draws the batches it would have drawn."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


class EpochBatchSampler(BatchSampler):
    """A batch sampler that passes the trainer's `set_epoch` on to the sampler it wraps."""

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


class SeededMPerClassBatches(Sampler[list[int]]):
    """Batches of m images of each of batch_size / m distinct classes, drawn from (seed, epoch).

    The batches pytorch-metric-learning's MPerClassSampler makes (classes drawn without replacement
    for each batch; a class's m images without replacement, or with it when the class holds fewer than
    m), from a generator of its own instead of numpy's global state, so that an epoch can be drawn
    again after a resume and by every process alike. An epoch holds len(labels) // batch_size batches.
    """

    def __init__(self, labels: torch.Tensor, m: int, batch_size: int, seed: int) -> None:
        if batch_size % m:
            raise ValueError(f"train.batch_size ({batch_size}) must be a multiple of data.m_per_class ({m})")
        classes, codes = torch.unique(labels, return_inverse=True)
        if batch_size // m > classes.numel():
            raise ValueError(
                f"train.batch_size={batch_size} with data.m_per_class={m} needs {batch_size // m} "
                f"identities in every batch, the training set has {classes.numel()}: set "
                f"train.batch_size={m * classes.numel()} or lower (a multiple of {m}), or a smaller "
                "data.m_per_class"
            )
        order = torch.argsort(codes, stable=True)
        counts = torch.bincount(codes, minlength=classes.numel())
        self.members = list(torch.split(order, counts.tolist()))
        self.m = m
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.num_batches = labels.numel() // batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = epoch_generator(self.seed, self.epoch)
        classes_per_batch = self.batch_size // self.m
        for _ in range(self.num_batches):
            batch: list[int] = []
            for code in torch.randperm(len(self.members), generator=generator)[:classes_per_batch].tolist():
                members = self.members[code]
                if members.numel() >= self.m:
                    picked = torch.randperm(members.numel(), generator=generator)[: self.m]
                else:
                    picked = torch.randint(members.numel(), (self.m,), generator=generator)
                batch.extend(members[picked].tolist())
            yield batch

    def __len__(self) -> int:
        return self.num_batches


class RankSlices(Sampler[list[int]]):
    """This process's share of every global batch: rows rank, rank + W, rank + 2W, ... (W processes),
    so the processes' slices of a step partition its global batch.

    Strided rather than contiguous: an m-per-class batch lists each class's m images together, and a
    contiguous slice would hand each process a few classes whole. BatchNorm normalises each process's
    slice by its own statistics, and statistics of a few classes would make those of different processes
    incomparable; interleaved slices each hold a share of every class.
    """

    def __init__(self, batches: Sampler[list[int]], rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.batches = batches
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.batches, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def train_batches(
    images: LabelledImages,
    batch_size: int,
    seed: int,
    m_per_class: int | None = None,
    num_workers: int | None = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    feeds_cuda: bool = False,
    augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataLoader:
    """Shuffled training batches, or batches of m images per class, of `batch_size` images in all;
    process `rank` of `world_size` gets its slice of each (see the module docstring). `feeds_cuda`:
    the batches go to a CUDA device (pinned memory, and the default number of workers).
    `augmentation`: a transform of one uint8 image, applied to each image of a batch where the batch is
    made (data/augmentation.py), under the batch's seed."""
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) is the batch of one step over all {world_size} processes; "
            f"it must be a multiple of {world_size}"
        )
    batches: Sampler[list[int]]
    if m_per_class is not None:
        batches = SeededMPerClassBatches(images.labels, m_per_class, batch_size, seed)
    else:
        batches = EpochBatchSampler(SeededRandomSampler(len(images), seed), batch_size, drop_last=True)
    if len(batches) == 0:  # type: ignore[arg-type]
        raise ValueError(f"the training set ({len(images)} images) is smaller than one batch ({batch_size})")
    dataset = images if augmentation is None else AugmentedImages(images, augmentation)
    return _loader(images, RankSlices(batches, rank, world_size), num_workers, feeds_cuda, dataset)


def eval_batches(
    images: LabelledImages, batch_size: int, num_workers: int | None = 0, feeds_cuda: bool | None = None
) -> DataLoader:
    """Batches in dataset order, for embedding; `feeds_cuda` defaults to whether torch sees a CUDA
    device, where the embedding pipelines put the model."""
    batches = BatchSampler(SequentialSampler(range(len(images))), batch_size=batch_size, drop_last=False)
    if feeds_cuda is None:
        feeds_cuda = torch.cuda.is_available()
    return _loader(images, batches, num_workers, feeds_cuda)


def _loader(
    images: LabelledImages,
    batches: Sampler[list[int]],
    num_workers: int | None,
    feeds_cuda: bool,
    dataset: Dataset | None = None,
) -> DataLoader:
    """A loader of `batches` of `images` (read through `dataset`, an augmenting view of them, if given)."""
    workers = (
        0 if isinstance(images, InMemoryImages) else resolve_num_workers(num_workers, feeds_cuda=feeds_cuda)
    )
    return DataLoader(
        images if dataset is None else dataset,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=feeds_cuda,
    )
