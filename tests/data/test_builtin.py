import gzip
import struct

import numpy as np
import pytest
import torch

from embedlab.data import builtin
from embedlab.data.builtin import load_digits, load_fashion_mnist, load_mnist_5k, read_idx


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_truncation(tmp_path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)
    with gzip.open(tmp_path / "short.gz", "wb") as stream:
        stream.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_fashion_mnist_from_a_folder_named_by_the_environment(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv(builtin.FASHION_MNIST_ENV, str(tmp_path))
    loaded = load_fashion_mnist()
    assert loaded.train.images.shape == (6, 1, 28, 28)
    assert loaded.test is not None and loaded.test.labels.tolist() == [0, 1, 2, 3]


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(builtin.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(builtin, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(builtin.Path, "home", lambda: tmp_path / "home")
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


def test_digits_and_mnist_5k_are_uint8_images_with_ten_classes() -> None:
    digits = load_digits().train
    assert digits.images.shape == (1797, 1, 8, 8) and int(digits.images.max()) == 255
    mnist = load_mnist_5k().train
    assert mnist.images.shape == (5000, 1, 28, 28)
    assert sorted(set(mnist.labels.tolist())) == list(range(10))


def test_synthetic_images_are_seeded_in_memory_at_the_asked_size() -> None:
    from embedlab.config import SyntheticDataset
    from embedlab.data.builtin import make_synthetic

    spec = SyntheticDataset(images=30, classes=4)
    first = make_synthetic(spec, image_size=16, channels=3).train
    again = make_synthetic(spec, image_size=16, channels=3).train
    assert first.images.shape == (30, 3, 16, 16) and first.images.dtype == torch.uint8
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert torch.bincount(first.labels).tolist() == [8, 8, 7, 7]
    assert first.images.float().std() > 50  # noise over the whole 0..255 range, not a constant


def test_a_synthetic_dataset_splits_like_a_builtin_set() -> None:
    from embedlab.config import load_config
    from embedlab.data.splits import prepare_data

    cfg, _ = load_config(
        None, ["data.dataset=synthetic:40:4", "data.image_size=8", "data.validation.split=images"]
    )
    data = prepare_data(cfg.data)
    assert (data.image_size, data.channels, data.num_classes) == (8, 3, 4)
    assert len(data.train) + len(data.query) == 40
    assert data.record["dataset"] == "synthetic:40:4"
