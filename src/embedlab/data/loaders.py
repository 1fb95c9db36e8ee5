"""Batches for training and embedding: a batch sampler drives a dataset that returns whole batches.

The loader runs with `batch_size=None`: each element the sampler yields is a list of indices, and the
dataset answers it with a stacked batch, so in-memory sets never collate one image at a time.

Training batches are global: `train.batch_size` images per optimisation step whatever the number of
processes. Every process draws the same global batches, a function of (seed, epoch) only, and keeps its
own slice of each (every W-th row), so under DDP the processes together see exactly the batch one process
would, none sees another's rows, and a resumed run draws the batches it would have drawn.

`data.sampler` picks how the global batches are drawn (docs/sampling.md): shuffled (random), up to m
distinct images of each identity drawn (m_per_class), or every identity equally likely (class_balanced).
Every training batch is a `SampledBatch`: its indices and a seed of its own, from (seed, epoch, batch
index), for the batch's random draws; each process's slice carries the seed of the global batch.

Feeding a CUDA GPU, batches come in pinned memory (so the copy to the device overlaps the step) from
`data.num_workers` processes that live as long as the loader; left unset, the number of workers is
min(MAX_DEFAULT_WORKERS, CPU cores - 1) there and 0 on a CPU-only run, whose cores do torch's work.
In-memory sets are indexed in the main process whatever the setting: a batch is one tensor index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from embedlab.data.augmentation import AugmentedImages
from embedlab.data.images import InMemoryImages, LabelledImages

#: `data.sampler`'s values; auto is m_per_class when `data.m_per_class` is set, else random.
SamplerName = Literal["auto", "random", "m_per_class", "class_balanced"]

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


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of batch `index` (from 0) of `epoch` under `train.seed` = `seed`: an int in [0, 2**63)
    from numpy's SeedSequence over the three, so that neighbouring batches and epochs get unrelated
    seeds. A negative `seed` is folded onto the non-negative ints first (0, -1, 1, -2, ... -> 0, 1, 2, 3)."""
    if epoch < 0 or index < 0:
        raise ValueError(f"epoch and batch index count from 0, got epoch={epoch}, index={index}")
    folded = 2 * seed if seed >= 0 else -2 * seed - 1
    state = np.random.SeedSequence([folded, epoch, index]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


class SampledBatch(list[int]):
    """The dataset indices of one training batch, and `seed`, the seed of the batch's own random draws
    (augmentation), from (train.seed, epoch, batch index in the epoch) by `batch_seed`.

    A plain list otherwise: the dataset indexes with it as with any list, and it compares equal to the
    list of its indices. Every process's slice of a global batch (`RankSlices`) carries the seed of the
    global batch, so the processes of one step share it; a consumer that wants the same augmentation
    whatever the number of processes draws the parameters of all `train.batch_size` rows from the seed
    and keeps those of its own rows (rank, rank + W, ...).
    """

    seed: int

    def __init__(self, indices: Iterable[int], *, seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


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
    """Batches of the sampler it wraps, as `SampledBatch`es seeded from (`seed`, epoch, batch index);
    it passes the trainer's `set_epoch` on to that sampler."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool, *, seed: int) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[SampledBatch]:  # type: ignore[override]
        for index, batch in enumerate(super().__iter__()):
            yield SampledBatch(batch, seed=batch_seed(self.seed, self.epoch, index))


class _IdentityBatches(Sampler[SampledBatch]):
    """What the identity-aware samplers share: each identity's images, the epoch's seeded batches,
    len(labels) // batch_size of them an epoch."""

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        _, codes, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        self.codes = codes  # (N,) each image's identity, 0 .. identities - 1
        self.sizes: list[int] = counts.tolist()  # images of each identity
        order = torch.argsort(codes, stable=True)
        self.members = list(torch.split(order, self.sizes))  # each identity's image indices
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.num_batches = labels.numel() // batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self, generator: torch.Generator) -> list[int]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[SampledBatch]:
        generator = epoch_generator(self.seed, self.epoch)
        for index in range(self.num_batches):
            yield SampledBatch(self._draw(generator), seed=batch_seed(self.seed, self.epoch, index))

    def __len__(self) -> int:
        return self.num_batches


def _min_images_note(min_images: int) -> str:
    return f" with data.min_images_per_identity={min_images} images or more" if min_images > 1 else ""


class SeededMPerClassBatches(_IdentityBatches):
    """Batches of up to m distinct images of each identity drawn, `batch_size` images in all, drawn
    from (seed, epoch); an epoch holds len(labels) // batch_size batches.

    Each batch takes identities in a random order, without replacement, and from each min(m, its
    images) of its images, without replacement, until the batch holds `batch_size` images: no image
    appears twice in a batch, an identity with fewer than m images gives all it has, and the last
    identity drawn gives what room is left. When that room is one image and the identity has more (a
    lone image has no positive in the batch), an identity already in the batch with 3 images or more
    gives one back so that the last gives 2; failing that, the next identity of a single image in the
    order takes the slot; failing that too (every identity so far gave 2 and the batch size is odd), the
    lone image stays. Identities with fewer than `min_images` images are never drawn. The batch size
    need not be a multiple of m.

    Unlike pytorch-metric-learning's MPerClassSampler, which fills m slots of a small class by drawing
    with replacement (a 1-image identity would fill all m with one picture), and which draws from
    numpy's global state; the generator here is the epoch's own, so an epoch can be drawn again after a
    resume and by every process alike.
    """

    def __init__(self, labels: torch.Tensor, m: int, batch_size: int, seed: int, min_images: int = 1) -> None:
        if m < 1 or min_images < 1:
            raise ValueError(f"m and min_images must be 1 or more, got m={m}, min_images={min_images}")
        super().__init__(labels, batch_size, seed)
        self.m = m
        eligible = [c for c, size in enumerate(self.sizes) if size >= min_images]
        self.identities = torch.tensor(eligible, dtype=torch.long)
        offered = sum(min(m, self.sizes[c]) for c in eligible)  # distinct images a batch can take
        if offered < batch_size:
            fixes = [f"set train.batch_size={offered} or lower"] if offered >= 2 else []
            if any(self.sizes[c] > m for c in eligible):
                fixes.append("a larger data.m_per_class")
            if len(eligible) < len(self.sizes):
                fixes.append(
                    f"a smaller data.min_images_per_identity (it leaves out "
                    f"{len(self.sizes) - len(eligible)} of {len(self.sizes)} identities)"
                )
            raise ValueError(
                f"train.batch_size={batch_size} with data.m_per_class={m} needs {batch_size} distinct "
                f"images in every batch, at most {m} of each identity; the training set's {len(eligible)} "
                f"identities{_min_images_note(min_images)} offer {offered}: " + ", or ".join(fixes)
            )

    def _draw(self, generator: torch.Generator) -> list[int]:
        order = self.identities[torch.randperm(self.identities.numel(), generator=generator)].tolist()
        rows: list[list[int]] = []  # the images of each identity in the batch
        room = self.batch_size
        for position, code in enumerate(order):
            if room == 0:
                break
            if room == 1 and self.m > 1 and self.sizes[code] > 1:
                code, room = self._last_slot(rows, order[position + 1 :], code)
            size = self.sizes[code]
            take = min(self.m, size, room)
            picked = torch.randperm(size, generator=generator)[:take]
            rows.append(self.members[code][picked].tolist())
            room -= take
        assert room == 0, "the constructor checked that the identities fill a batch"
        return [index for row in rows for index in row]

    def _last_slot(self, rows: list[list[int]], rest: list[int], code: int) -> tuple[int, int]:
        """(identity, room) for the last slot of a batch, which `code` (of 2 images or more) would
        fill alone: an identity of 3 or more in the batch gives one image back and `code` gives 2, or
        the next single-image identity of the order takes the slot, or `code` gives its lone image."""
        donor = next((row for row in rows if len(row) >= 3), None)
        if donor is not None:
            donor.pop()
            return code, 2
        single = next((other for other in rest if self.sizes[other] == 1), None)
        return (single, 1) if single is not None else (code, 1)


class SeededClassBalancedBatches(_IdentityBatches):
    """Batches of `batch_size` distinct images in which every identity is equally likely: each batch
    draws its images without replacement with probability proportional to 1 / (images of the image's
    identity), by torch.multinomial with the epoch's generator (seed, epoch); an epoch holds
    len(labels) // batch_size batches. Identities with fewer than `min_images` images are never drawn.

    Without replacement within a batch, an identity's share of a batch is only near 1 / identities:
    a batch holds at most all of an identity's images, and a small identity drawn once is less likely
    to be drawn again in the same batch. (torch.multinomial takes at most 2**24 images.)
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int, min_images: int = 1) -> None:
        if min_images < 1:
            raise ValueError(f"min_images must be 1 or more, got {min_images}")
        super().__init__(labels, batch_size, seed)
        sizes = torch.tensor(self.sizes, dtype=torch.float64)[self.codes]  # (N,) images of its identity
        self.weights = torch.where(sizes >= min_images, 1.0 / sizes, 0.0)  # (N,)
        drawable = int(torch.count_nonzero(self.weights))
        if drawable < batch_size:
            fixes = [f"set train.batch_size={drawable} or lower"] if drawable >= 2 else []
            if min_images > 1:
                fixes.append("a smaller data.min_images_per_identity")
            raise ValueError(
                f"train.batch_size={batch_size} with data.sampler=class_balanced needs {batch_size} "
                f"distinct images in every batch; the training set holds {drawable}"
                f"{' of identities' + _min_images_note(min_images) if min_images > 1 else ''}: "
                + ", or ".join(fixes)
            )

    def _draw(self, generator: torch.Generator) -> list[int]:
        return torch.multinomial(
            self.weights, self.batch_size, replacement=False, generator=generator
        ).tolist()


class RankSlices(Sampler[SampledBatch]):
    """This process's share of every global batch: rows rank, rank + W, rank + 2W, ... (W processes),
    so the processes' slices of a step partition its global batch.

    Strided rather than contiguous: an m-per-class batch lists each class's m images together, and a
    contiguous slice would hand each process a few classes whole. BatchNorm normalises each process's
    slice by its own statistics, and statistics of a few classes would make those of different processes
    incomparable; interleaved slices each hold a share of every class (of every one with at least W images
    in the batch).
    """

    def __init__(self, batches: Sampler[SampledBatch], rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.batches = batches
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.batches, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[SampledBatch]:
        for batch in self.batches:  # each process's slice keeps the seed of the global batch
            yield SampledBatch(batch[self.rank :: self.world_size], seed=batch.seed)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def resolve_sampler(
    sampler: SamplerName, m_per_class: int | None, min_images_per_identity: int = 1
) -> Literal["random", "m_per_class", "class_balanced"]:
    """The sampler `data.sampler` names (auto: m_per_class when `data.m_per_class` is set, else
    random); a ValueError for settings the sampler cannot use, as the config check words it."""
    resolved = sampler if sampler != "auto" else ("m_per_class" if m_per_class is not None else "random")
    if resolved == "m_per_class" and m_per_class is None:
        raise ValueError(
            "data.sampler m_per_class needs data.m_per_class (the images of each identity in a batch): "
            "set data.m_per_class, e.g. 4, or choose data.sampler random or class_balanced"
        )
    if resolved == "random" and min_images_per_identity > 1:
        raise ValueError(
            f"data.min_images_per_identity={min_images_per_identity} leaves identities out of "
            "m_per_class and class_balanced batches, and data.sampler is random (auto without "
            "data.m_per_class is random), which draws every image: set data.sampler or data.m_per_class, "
            "or leave data.min_images_per_identity at 1"
        )
    return resolved


def train_batches(
    images: LabelledImages,
    batch_size: int,
    seed: int,
    m_per_class: int | None = None,
    num_workers: int | None = 0,
    *,
    sampler: SamplerName = "auto",
    min_images_per_identity: int = 1,
    rank: int = 0,
    world_size: int = 1,
    feeds_cuda: bool = False,
    augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DataLoader:
    """Training batches of `batch_size` images in all, as `sampler` draws them (`resolve_sampler`):
    shuffled (random), up to m images of each identity drawn (m_per_class, m = `m_per_class`), or
    every identity equally likely (class_balanced); identities with fewer than
    `min_images_per_identity` images are left out of the last two. Process `rank` of `world_size`
    gets its slice of each (see the module docstring). `feeds_cuda`: the batches go to a CUDA device
    (pinned memory, and the default number of workers). `augmentation`: a transform of one uint8
    image, applied to each image of a batch where the batch is made (data/augmentation.py), under the
    batch's seed."""
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) is the batch of one step over all {world_size} processes; "
            f"it must be a multiple of {world_size}"
        )
    resolved = resolve_sampler(sampler, m_per_class, min_images_per_identity)
    batches: Sampler[SampledBatch]
    if resolved == "m_per_class":
        assert m_per_class is not None  # resolve_sampler refuses m_per_class without it
        batches = SeededMPerClassBatches(
            images.labels, m_per_class, batch_size, seed, min_images_per_identity
        )
    elif resolved == "class_balanced":
        batches = SeededClassBalancedBatches(images.labels, batch_size, seed, min_images_per_identity)
    else:
        batches = EpochBatchSampler(
            SeededRandomSampler(len(images), seed), batch_size, drop_last=True, seed=seed
        )
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
    batches: Sampler[list[int]] | Sampler[SampledBatch],
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
