import pytest
import torch
from torchvision.transforms import v2

from embedlab.config import ConfigError, DataConfig, load_config
from embedlab.data.augmentation import AugmentedImages, augment_images, build_augmentation
from embedlab.data.images import InMemoryImages


class _SeededBatch(list):
    seed = 7


def _blocks(*blocks: dict) -> list:
    return DataConfig(augment=list(blocks)).augment


def test_blocks_build_torchvision_v2_transforms_and_a_missing_size_is_the_image_size() -> None:
    pipeline = build_augmentation(
        _blocks(
            {"name": "RandomResizedCrop", "scale": [0.6, 1.0]}, {"name": "ColorJitter", "brightness": 0.2}
        ),
        image_size=24,
    )
    crop, jitter = pipeline.transforms
    assert isinstance(crop, v2.RandomResizedCrop) and list(crop.size) == [24, 24]
    assert crop.scale == [0.6, 1.0] and isinstance(jitter, v2.ColorJitter)
    assert build_augmentation([], 24) is None


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"name": "RandomResizedCop"},
            r"data.augment\[0\]: 'RandomResizedCop' is not a torchvision.*"
            r"Did you mean 'RandomResizedCrop'",
        ),
        (
            {"name": "RandomRotation", "degree": 15},
            r"RandomRotation.*does not take 'degree'.*Did you mean 'degrees'",
        ),
        (
            {"name": "RandomErasing", "p": 2.0},
            r"data.augment\[0\] \(RandomErasing\): `p` should be a floating point value in the interval",
        ),
        ({"name": "Normalize", "mean": [0.5], "std": [0.5]}, "the model normalises its input itself"),
    ],
)
def test_a_bad_block_is_an_error_when_the_config_is_read(block: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.augment=[{block}]".replace("'", '"')])


def test_the_old_flip_and_crop_padding_keys_read_as_their_blocks() -> None:
    blocks = DataConfig(augment={"flip": True, "crop_padding": 4}).augment
    assert [b.label() for b in blocks] == ["RandomCrop(padding=4)", "RandomHorizontalFlip"]
    assert DataConfig(augment={"flip": False, "crop_padding": 0}).augment == []
    with pytest.raises(ValueError, match="mapping form takes only flip and crop_padding, not 'rotate'"):
        DataConfig(augment={"rotate": 10})


def _asymmetric(batch: int) -> torch.Tensor:
    image = torch.zeros(1, 6, 6, dtype=torch.uint8)
    image[..., :2] = 255
    return image.expand(batch, -1, -1, -1).clone()


def test_each_image_of_a_batch_gets_its_own_draw() -> None:
    flipped = augment_images(_asymmetric(32), v2.RandomHorizontalFlip(), seed=0)
    mirrored = flipped[..., -1].sum(dim=(1, 2)) > 0
    assert 0 < int(mirrored.sum()) < 32  # one draw for the batch would flip all or none
    assert flipped.dtype == torch.uint8


def test_a_seed_repeats_the_draw_and_leaves_the_global_generator_alone() -> None:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    transform = v2.Compose([v2.RandomResizedCrop(16, scale=(0.3, 1.0)), v2.ColorJitter(0.5, 0.5)])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = augment_images(images, transform, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, augment_images(images, transform, seed=5))
    assert not torch.equal(first, augment_images(images, transform, seed=6))


def test_a_transform_that_changes_the_size_is_resized_back() -> None:
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    out = augment_images(images, v2.RandomRotation(30, expand=True), seed=0)
    assert out.shape == images.shape


def test_augmented_images_augment_a_batch_under_its_seed() -> None:
    images = InMemoryImages(
        labels=torch.arange(6), images=torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    )
    transform = v2.RandomResizedCrop(12, scale=(0.2, 0.5))
    view = AugmentedImages(images, transform)
    batch = _SeededBatch([0, 2, 4])
    pixels, labels = view[batch]
    assert torch.equal(labels, torch.tensor([0, 2, 4]))
    assert torch.equal(pixels, augment_images(images.images[[0, 2, 4]], transform, seed=7))
    assert len(view) == 6
