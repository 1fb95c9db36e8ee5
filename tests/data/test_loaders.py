import pytest
import torch

from embedlab.data.images import InMemoryImages
from embedlab.data.loaders import SeededRandomSampler, eval_batches, train_batches


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


def test_a_set_smaller_than_one_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="smaller than one batch"):
        train_batches(_images(4), batch_size=8, seed=0)


def test_eval_batches_keep_order_and_the_last_partial_batch() -> None:
    batches = list(eval_batches(_images(10), batch_size=4))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    assert torch.cat([b.flatten() for b, _ in batches]).tolist() == list(range(10))
