import torch
import torch.nn.functional as F

from embedlab.config import AugmentConfig
from embedlab.data.transforms import Preprocess, augment, random_flip, random_pad_crop


def test_preprocess_normalises_converts_channels_and_resizes() -> None:
    prep = Preprocess(channels=3, size=4, mean=[0.5] * 3, std=[0.5] * 3)
    grey = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = prep(grey)
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out, torch.ones_like(out))
    black = prep(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert torch.allclose(black, -torch.ones_like(black))


def test_pad_crop_returns_a_window_of_the_padded_image() -> None:
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    cropped = random_pad_crop(images, 1)
    padded = F.pad(images, (1, 1, 1, 1))
    for b in range(2):
        assert any(
            torch.equal(cropped[b], padded[b, :, i : i + 4, j : j + 5]) for i in range(3) for j in range(3)
        )


def test_flip_is_either_identity_or_mirror_per_image() -> None:
    images = torch.rand(16, 1, 3, 3)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    kinds = [
        torch.equal(flipped[i], images[i]) or torch.equal(flipped[i], images[i].flip(-1)) for i in range(16)
    ]
    assert all(kinds)
    assert not torch.equal(flipped, images)


def test_augment_without_settings_is_identity() -> None:
    images = torch.rand(4, 1, 5, 5)
    assert torch.equal(augment(images, AugmentConfig()), images)
