import pytest
import torch
from PIL import Image

from embedlab.data.images import ImageFiles, InMemoryImages, check_labels, read_image


def test_in_memory_item_and_batch_indexing() -> None:
    images = torch.arange(5 * 4, dtype=torch.uint8).view(5, 1, 2, 2)
    data = InMemoryImages(labels=torch.tensor([0, 1, 0, 1, 2]), images=images)
    image, label = data[3]
    assert image.shape == (1, 2, 2) and int(label) == 1
    batch, labels = data[[0, 4]]
    assert batch.shape == (2, 1, 2, 2) and labels.tolist() == [0, 2]
    assert data.channels == 1 and data.image_size == 2 and len(data) == 5


def test_label_column_is_refused_with_its_shape() -> None:
    with pytest.raises(ValueError, match=r"1-D of shape \(N,\), got shape \(3, 1\)"):
        check_labels(torch.zeros(3, 1, dtype=torch.long), "x")
    with pytest.raises(ValueError, match="integers"):
        check_labels(torch.zeros(3), "x")


def test_in_memory_requires_uint8_nchw() -> None:
    with pytest.raises(ValueError, match=r"uint8 of shape \(N, C, H, W\)"):
        InMemoryImages(labels=torch.zeros(2, dtype=torch.long), images=torch.zeros(2, 4, 4))


def test_subset_keeps_groups_and_can_relabel() -> None:
    data = InMemoryImages(
        labels=torch.tensor([5, 6, 7]),
        groups=torch.tensor([1, 1, 2]),
        images=torch.zeros(3, 1, 2, 2, dtype=torch.uint8),
    )
    part = data.subset(torch.tensor([2, 0]), labels=torch.tensor([0, 1]))
    assert part.labels.tolist() == [0, 1] and part.groups.tolist() == [2, 1]


def test_read_image_resizes_and_converts(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(path)
    rgb = read_image(path, 8, 3)
    grey = read_image(path, 8, 1)
    assert rgb.shape == (3, 8, 8) and rgb.dtype == torch.uint8 and int(rgb[0, 0, 0]) == 255
    assert grey.shape == (1, 8, 8)


def test_missing_and_corrupt_images_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png", 8, 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image(broken, 8, 3)


def test_image_files_batch(image_folder) -> None:
    paths = sorted(image_folder.rglob("*.png"))[:3]
    data = ImageFiles(labels=torch.tensor([0, 0, 1]), paths=paths, size=6, num_channels=3)
    batch, labels = data[[0, 2]]
    assert batch.shape == (2, 3, 6, 6) and labels.tolist() == [0, 1]
