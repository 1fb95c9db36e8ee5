import pytest
import torch

from embedlab.data.images import InMemoryImages
from embedlab.data.loaders import (
    RankSlices,
    SampledBatch,
    SeededClassBalancedBatches,
    SeededMPerClassBatches,
    SeededRandomSampler,
    batch_seed,
    eval_batches,
    train_batches,
)


def _images(n: int = 40, classes: int = 4) -> InMemoryImages:
    return InMemoryImages(
        labels=torch.arange(n) % classes, images=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    )


def test_train_batches_are_whole_batches_from_the_dataset() -> None:
    loader = train_batches(_images(), batch_size=8, seed=0)
    batches = list(loader)
    assert len(batches) == 5
    seen = torch.cat([images.flatten() for images, _ in batches])
    assert sorted(seen.tolist()) == list(range(40))


def test_seeded_sampler_repeats_an_epoch_and_changes_between_epochs() -> None:
    sampler = SeededRandomSampler(20, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first and first != second


def test_m_per_class_batches_hold_m_images_of_each_class() -> None:
    loader = train_batches(_images(), batch_size=8, seed=0, m_per_class=2)
    for _, labels in loader:
        counts = torch.bincount(labels, minlength=4)
        assert counts.tolist() == [2, 2, 2, 2]


def test_m_per_class_batches_need_not_be_a_multiple_of_m() -> None:
    # 8 identities of 5 images, m = 4, batches of 10: two identities give 4, the last drawn the 2 left
    loader = train_batches(_images(40, 8), batch_size=10, seed=0, m_per_class=4)
    for _, labels in loader:
        assert sorted(torch.bincount(labels).tolist(), reverse=True)[:3] == [4, 4, 2]


def test_too_few_identities_for_a_batch_names_both_keys_and_the_batch_that_fits() -> None:
    # 4 identities, m = 2: a batch of 16 distinct images needs 8 identities; 8 images (4 x 2) fit
    with pytest.raises(
        ValueError,
        match=r"train.batch_size=16 with data.m_per_class=2 needs 16 distinct images .* 4 identities "
        r"offer 8: set train.batch_size=8 or lower, or a larger data.m_per_class",
    ):
        train_batches(_images(), batch_size=16, seed=0, m_per_class=2)


def test_the_batch_that_fits_counts_the_images_of_small_identities() -> None:
    # identities of 1, 2, 3 and 6 images with m = 4 offer 1 + 2 + 3 + 4 = 10 distinct images a batch
    images = _labelled([1, 2, 3, 6])
    train_batches(images, batch_size=10, seed=0, m_per_class=4)
    with pytest.raises(ValueError, match=r"4 identities offer 10: set train.batch_size=10 or lower"):
        train_batches(images, batch_size=11, seed=0, m_per_class=4)
    # without the single-image identity: 3 identities offer 9
    with pytest.raises(
        ValueError,
        match=r"3 identities with data.min_images_per_identity=2 images or more offer 9: set "
        r"train.batch_size=9 or lower, or a larger data.m_per_class, or a smaller "
        r"data.min_images_per_identity \(it leaves out 1 of 4 identities\)",
    ):
        train_batches(images, batch_size=10, seed=0, m_per_class=4, min_images_per_identity=2)


def test_a_set_smaller_than_one_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="smaller than one batch"):
        train_batches(_images(4), batch_size=8, seed=0)


def test_eval_batches_keep_order_and_the_last_partial_batch() -> None:
    batches = list(eval_batches(_images(10), batch_size=4))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert torch.cat([b.flatten() for b, _ in batches]).tolist() == list(range(10))


def _epoch(loader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [images.flatten().tolist() for images, _ in loader]


def test_m_per_class_batches_repeat_an_epoch_and_change_between_epochs() -> None:
    loader = train_batches(_images(), batch_size=8, seed=3, m_per_class=2)
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    assert _epoch(loader, 0) == first and first != second
    assert len(first) == 5  # len(images) // batch_size batches, as pytorch-metric-learning's sampler


#: The identity samplers, as train_batches' keyword arguments.
IDENTITY_SAMPLERS = {
    "m_per_class": {"sampler": "m_per_class", "m_per_class": 4},
    "class_balanced": {"sampler": "class_balanced"},
}


def _labelled(sizes: list[int]) -> InMemoryImages:
    """Identity c holds sizes[c] images; image i's pixel is i."""
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    n = labels.numel()
    return InMemoryImages(labels=labels, images=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1))


#: Whale-like identities: mostly 1 to 3 images, a few with more than m = 4.
SMALL = [1, 2, 3, 1, 2, 3, 6, 1, 2, 3, 5, 2, 3, 1, 8, 2, 3, 2, 1, 3]


@pytest.mark.parametrize("kind", IDENTITY_SAMPLERS)
def test_identity_batches_repeat_an_epoch_change_between_epochs_and_resume(kind: str) -> None:
    loader = train_batches(_labelled(SMALL), batch_size=8, seed=3, **IDENTITY_SAMPLERS[kind])
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    assert _epoch(loader, 0) == first and first != second
    assert len(first) == sum(SMALL) // 8
    # a resumed run builds a new loader and starts at the epoch it stopped in
    resumed = train_batches(_labelled(SMALL), batch_size=8, seed=3, **IDENTITY_SAMPLERS[kind])
    assert _epoch(resumed, 1) == second
    other_seed = train_batches(_labelled(SMALL), batch_size=8, seed=4, **IDENTITY_SAMPLERS[kind])
    assert _epoch(other_seed, 0) != first


@pytest.mark.parametrize("kind", IDENTITY_SAMPLERS)
def test_identity_batches_are_whole_and_never_repeat_an_image(kind: str) -> None:
    labels = _labelled(SMALL).labels
    batches = train_batches(_labelled(SMALL), batch_size=12, seed=0, **IDENTITY_SAMPLERS[kind]).sampler
    for epoch in range(20):
        batches.set_epoch(epoch)
        for batch in batches:
            assert len(batch) == 12 and len(set(batch)) == 12
            assert set(labels[batch].tolist()) <= set(range(len(SMALL)))


def test_m_per_class_takes_min_m_and_images_of_each_identity_drawn() -> None:
    """Every identity of a batch gives min(m, its images), save the last drawn (the room left) and at
    most one that gave an image back to it; an identity of m images or more gives m save those two."""
    sizes = torch.tensor(SMALL)
    labels = _labelled(SMALL).labels
    batches = SeededMPerClassBatches(labels, m=4, batch_size=16, seed=0)
    big_short = 0
    for epoch in range(30):
        batches.set_epoch(epoch)
        for batch in batches:
            counts = torch.bincount(labels[batch], minlength=len(SMALL))
            drawn = counts > 0
            share = torch.clamp(sizes, max=4)
            assert bool((counts <= share).all())
            assert int((counts[drawn] < share[drawn]).sum()) <= 2
            big_short += int((counts[drawn & (sizes >= 4)] < 4).sum())
    assert big_short < 30 * len(batches)  # most batches take m of every big identity in them


def test_m_per_class_leaves_no_lone_image_of_an_identity_that_has_more_when_it_can() -> None:
    # m = 3, identities of 3, batches of 7: 3 + 3 + 1 would leave a lone image; one gives one back
    labels = torch.arange(24) // 3
    for batch in _all_batches(SeededMPerClassBatches(labels, m=3, batch_size=7, seed=0)):
        assert sorted(torch.bincount(labels[batch]).tolist())[-3:] == [2, 2, 3]
    # m = 2, pairs and one single-image identity, batches of 5: the single one takes the odd slot
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    for batch in _all_batches(SeededMPerClassBatches(labels, m=2, batch_size=5, seed=0)):
        counts = torch.bincount(labels[batch], minlength=6)
        assert counts[5] == 1 and sorted(counts[:5].tolist()) == [0, 0, 0, 2, 2]


def _all_batches(batches, epochs: int = 20) -> list[SampledBatch]:
    drawn = []
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        drawn.extend(batches)
    return drawn


@pytest.mark.parametrize("kind", IDENTITY_SAMPLERS)
def test_min_images_per_identity_leaves_small_identities_out(kind: str) -> None:
    images = _labelled(SMALL)
    sizes = torch.tensor(SMALL)
    kwargs = IDENTITY_SAMPLERS[kind]
    for minimum in (1, 2, 3):
        loader = train_batches(images, batch_size=8, seed=0, min_images_per_identity=minimum, **kwargs)
        seen = torch.cat([images.labels[batch] for batch in _all_batches(loader.sampler)])
        assert set(seen.unique().tolist()) == set(torch.nonzero(sizes >= minimum).flatten().tolist())
        assert len(loader) == sum(SMALL) // 8  # still len(images) // batch_size batches


def test_class_balanced_draws_every_identity_about_equally_often() -> None:
    # identities of 1 to 20 images: shuffled batches would draw the largest 20 times as often as the
    # smallest; class-balanced ones draw each about 1/20 of the images (a loose bound, seeded)
    sizes = list(range(1, 21))
    images = _labelled(sizes)
    batches = SeededClassBalancedBatches(images.labels, batch_size=8, seed=0)
    counts = torch.zeros(len(sizes))
    for batch in _all_batches(batches, epochs=40):  # 40 x 26 batches of 8
        counts += torch.bincount(images.labels[batch], minlength=len(sizes))
    ratio = counts / counts.mean()
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.3, ratio


def test_class_balanced_needs_a_batch_of_distinct_images() -> None:
    with pytest.raises(ValueError, match=r"class_balanced needs 12 distinct images .* holds 10: set "):
        train_batches(_labelled([1, 2, 3, 4]), batch_size=12, seed=0, sampler="class_balanced")
    with pytest.raises(ValueError, match=r"holds 7 of identities with data.min_images_per_identity=3"):
        train_batches(_labelled([1, 2, 3, 4]), 8, seed=0, sampler="class_balanced", min_images_per_identity=3)
    with pytest.raises(ValueError, match=r"offer 0: a smaller data.min_images_per_identity"):
        train_batches(_labelled([1, 2, 3]), 2, seed=0, m_per_class=2, min_images_per_identity=4)


def test_sampler_settings_the_sampler_cannot_use_are_errors() -> None:
    with pytest.raises(ValueError, match=r"data.sampler m_per_class needs data.m_per_class"):
        train_batches(_images(), batch_size=8, seed=0, sampler="m_per_class")
    with pytest.raises(ValueError, match=r"data.min_images_per_identity=2 .* data.sampler is random"):
        train_batches(_images(), batch_size=8, seed=0, min_images_per_identity=2)
    # auto follows data.m_per_class; an explicit sampler wins over it
    assert isinstance(_batches_of(train_batches(_images(), 8, 0, m_per_class=2)), SeededMPerClassBatches)
    explicit = train_batches(_images(), 8, 0, m_per_class=2, sampler="class_balanced")
    assert isinstance(_batches_of(explicit), SeededClassBalancedBatches)
    shuffled = train_batches(_images(), 8, 0, m_per_class=2, sampler="random")
    assert not isinstance(_batches_of(shuffled), SeededMPerClassBatches | SeededClassBalancedBatches)


def _batches_of(loader):
    assert isinstance(loader.sampler, RankSlices)
    return loader.sampler.batches


class _RecordingImages(InMemoryImages):
    """An in-memory set that records the index each __getitem__ receives."""

    received: list

    def __getitem__(self, index):
        self.received.append(index)
        return super().__getitem__(index)


SAMPLERS = {"random": {}, **IDENTITY_SAMPLERS}


@pytest.mark.parametrize("kind", SAMPLERS)
def test_every_batch_carries_a_seed_of_its_own_through_slices_and_the_loader(kind: str) -> None:
    def seeds(seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
        images = _RecordingImages(labels=_labelled(SMALL).labels, images=_labelled(SMALL).images)
        images.received = []
        loader = train_batches(images, 8, seed, rank=rank, world_size=world_size, **SAMPLERS[kind])
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        # DataLoader(batch_size=None) hands the dataset the sampler's element unchanged
        assert len(images.received) == len(batches)
        assert all(type(index) is SampledBatch for index in images.received)
        assert [len(index) for index in images.received] == [8 // world_size] * len(batches)
        return [index.seed for index in images.received]

    first = seeds(5, 0)
    assert seeds(5, 0) == first  # deterministic over (train.seed, epoch, index)
    assert first == [batch_seed(5, 0, index) for index in range(len(first))]
    assert len(set(first)) == len(first)  # one seed per batch
    assert not set(first) & set(seeds(5, 1)) and not set(first) & set(seeds(6, 0))
    # every process's slice of a global batch keeps the global batch's seed
    assert seeds(5, 0, rank=0, world_size=2) == first == seeds(5, 0, rank=1, world_size=2)


def test_batch_seeds_are_63_bit_and_take_negative_train_seeds() -> None:
    drawn = {
        batch_seed(seed, epoch, index) for seed in (-2, -1, 0, 1) for epoch in range(3) for index in range(3)
    }
    assert len(drawn) == 36 and all(0 <= s < 2**63 for s in drawn)
    with pytest.raises(ValueError, match="count from 0"):
        batch_seed(0, -1, 0)


def test_a_sampled_batch_is_its_list_of_indices_and_pickles_with_its_seed() -> None:
    import pickle

    batch = SampledBatch([3, 1, 2], seed=7)
    assert batch == [3, 1, 2] and isinstance(batch, list)
    copy = pickle.loads(pickle.dumps(batch))  # as it travels to a loader worker
    assert copy == batch and copy.seed == 7 and type(copy) is SampledBatch


@pytest.mark.parametrize("m_per_class", [None, 2])
def test_the_processes_slices_partition_the_batches_one_process_draws(m_per_class: int | None) -> None:
    """Under DDP each of the 2 processes keeps half of every global batch: together they train on
    exactly the single-process batches, and no row of a step reaches two processes."""
    single = _epoch(train_batches(_images(), 8, seed=1, m_per_class=m_per_class), 2)
    shares = [
        _epoch(train_batches(_images(), 8, seed=1, m_per_class=m_per_class, rank=r, world_size=2), 2)
        for r in range(2)
    ]
    assert all(len(share) == len(single) for share in shares)
    for step, batch in enumerate(single):
        assert shares[0][step] == batch[0::2] and shares[1][step] == batch[1::2]
    if m_per_class is not None:  # each slice holds a share of every class of the global batch
        labels = _images().labels
        for step, batch in enumerate(single):
            assert set(labels[shares[0][step]].tolist()) == set(labels[batch].tolist())


@pytest.mark.parametrize("kind", IDENTITY_SAMPLERS)
def test_the_processes_slices_partition_identity_batches_of_small_identities(kind: str) -> None:
    kwargs = IDENTITY_SAMPLERS[kind]
    single = _epoch(train_batches(_labelled(SMALL), 12, seed=1, **kwargs), 3)
    shares = [
        _epoch(train_batches(_labelled(SMALL), 12, seed=1, rank=r, world_size=3, **kwargs), 3)
        for r in range(3)
    ]
    for step, batch in enumerate(single):
        assert [share[step] for share in shares] == [batch[r::3] for r in range(3)]
        assert sorted(row for share in shares for row in share[step]) == sorted(batch)


def test_the_global_batch_must_split_evenly_over_the_processes() -> None:
    with pytest.raises(ValueError, match="multiple of 3"):
        train_batches(_images(), batch_size=8, seed=0, rank=0, world_size=3)


def test_default_workers_feed_a_gpu_and_leave_a_cpu_run_in_the_main_process(monkeypatch) -> None:
    from embedlab.data import loaders

    monkeypatch.setattr(loaders, "_usable_cpu_count", lambda: 16)
    assert loaders.resolve_num_workers(None, feeds_cuda=True) == loaders.MAX_DEFAULT_WORKERS
    assert loaders.resolve_num_workers(None, feeds_cuda=False) == 0
    assert loaders.resolve_num_workers(3, feeds_cuda=False) == 3
    monkeypatch.setattr(loaders, "_usable_cpu_count", lambda: 4)
    assert loaders.resolve_num_workers(None, feeds_cuda=True) == 3  # one core stays with training
    monkeypatch.setattr(loaders, "_usable_cpu_count", lambda: 1)
    assert loaders.resolve_num_workers(None, feeds_cuda=True) == 0


def test_batches_for_a_gpu_are_pinned_and_in_memory_sets_need_no_workers() -> None:
    # DataLoader only records pin_memory here; pinning itself needs a CUDA build and device.
    loader = train_batches(_images(), batch_size=8, seed=0, num_workers=4, feeds_cuda=True)
    assert loader.pin_memory and loader.num_workers == 0 and not loader.persistent_workers
    assert not train_batches(_images(), batch_size=8, seed=0).pin_memory
    assert not eval_batches(_images(10), batch_size=4, feeds_cuda=False).pin_memory


def test_workers_for_image_files_live_as_long_as_the_loader(tmp_path, make_image_folder) -> None:
    from embedlab.data.sources import read_folder

    source = read_folder(make_image_folder(tmp_path / "images", classes=2, per_class=2), 8, 3)
    loader = eval_batches(source.images, batch_size=2, num_workers=1, feeds_cuda=False)
    assert loader.num_workers == 1 and loader.persistent_workers and not loader.pin_memory
    assert eval_batches(source.images, batch_size=2, num_workers=None, feeds_cuda=False).num_workers == 0
