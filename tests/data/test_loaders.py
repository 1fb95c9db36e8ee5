import pytest
import torch

from embedlab.data.images import InMemoryImages
from embedlab.data.loaders import SeededMPerClassBatches, SeededRandomSampler, eval_batches, train_batches


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


def test_m_per_class_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="multiple of data.m_per_class"):
        train_batches(_images(), batch_size=9, seed=0, m_per_class=2)


def test_too_few_identities_for_a_batch_names_both_keys_and_the_batch_that_fits() -> None:
    # 4 identities, m = 2: a batch of 16 needs 8 identities; 8 images (4 x 2) is the most that fits
    with pytest.raises(ValueError, match=r"needs 8 identities .* has 4: set train.batch_size=8 or lower"):
        train_batches(_images(), batch_size=16, seed=0, m_per_class=2)


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


def test_m_per_class_draws_with_replacement_only_from_classes_smaller_than_m() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])
    batches = SeededMPerClassBatches(labels, m=3, batch_size=6, seed=0)
    for epoch in range(20):
        batches.set_epoch(epoch)
        for batch in batches:
            by_class = {int(c): [i for i in batch if labels[i] == c] for c in labels[batch].unique()}
            assert all(len(rows) == 3 for rows in by_class.values())
            assert all(len(set(rows)) == 3 for c, rows in by_class.items() if c != 1)


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
