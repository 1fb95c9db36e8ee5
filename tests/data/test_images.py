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


def _halves(path, width: int = 20, height: int = 10) -> None:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    image.save(path)


def test_a_box_crops_the_image_before_it_is_resized(tmp_path) -> None:
    _halves(tmp_path / "halves.png")
    right = read_image(tmp_path / "halves.png", 4, 3, box=(10, 0, 20, 10))
    assert right[2].min() == 255 and right[0].max() == 0  # all blue
    whole = read_image(tmp_path / "halves.png", 4, 3)
    assert whole[0, :, 0].min() == 255 and whole[2, :, -1].min() == 255  # red left, blue right


def test_a_box_is_clipped_to_the_image_and_one_outside_it_names_the_file(tmp_path) -> None:
    _halves(tmp_path / "halves.png")
    clipped = read_image(tmp_path / "halves.png", 4, 3, box=(10, -5, 99, 99))
    assert torch.equal(clipped, read_image(tmp_path / "halves.png", 4, 3, box=(10, 0, 20, 10)))
    with pytest.raises(ValueError, match=r"halves.png .*box \(30, 0, 40, 10\) .*leaves nothing"):
        read_image(tmp_path / "halves.png", 4, 3, box=(30, 0, 40, 10))


def test_image_files_read_each_item_with_its_own_box_and_subsets_keep_them(tmp_path) -> None:
    _halves(tmp_path / "halves.png")
    files = ImageFiles(
        labels=torch.tensor([0, 1, 2]),
        paths=[tmp_path / "halves.png"] * 3,
        size=4,
        num_channels=3,
        boxes=[(0, 0, 10, 10), (10, 0, 20, 10), None],
    )
    images, _ = files[torch.arange(3)]
    assert images[0, 0].min() == 255 and images[0, 2].max() == 0  # the red half
    assert images[1, 2].min() == 255 and images[1, 0].max() == 0  # the blue half
    subset = files.subset(torch.tensor([1]))
    assert subset.boxes == [(10, 0, 20, 10)] and torch.equal(subset[0][0], images[1])
