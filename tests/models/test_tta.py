import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedlab.config import ModelConfig
from embedlab.data.images import InMemoryImages
from embedlab.models import build_embedder
from embedlab.models.inference import embed
from embedlab.models.tta import TestTimeAugmentation, embed_views


@pytest.fixture(scope="module")
def embedder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_embedder(ModelConfig(embedding_dim=16), channels=1, image_size=16).eval()


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 16, 16), generator=generator, dtype=torch.uint8)


@torch.inference_mode()
def test_views_are_averaged_before_one_normalisation(embedder: torch.nn.Module) -> None:
    x = images()
    tta = TestTimeAugmentation(flip=True, scales=(1.0, 1.5))
    views = [
        embedder.unnormalised(x, 16),
        embedder.unnormalised(x.flip(-1), 16),
        embedder.unnormalised(x, 24),
        embedder.unnormalised(x.flip(-1), 24),
    ]
    expected = F.normalize(sum(views) / 4, dim=-1)
    torch.testing.assert_close(embed_views(embedder, x, tta), expected)
    # Not the mean of the normalised views.
    normalised_mean = F.normalize(sum(F.normalize(v, dim=-1) for v in views), dim=-1)
    assert not torch.allclose(expected, normalised_mean, atol=1e-4)


@torch.inference_mode()
def test_flip_tta_makes_an_image_and_its_mirror_embed_alike(embedder: torch.nn.Module) -> None:
    x = images()
    tta = TestTimeAugmentation(flip=True)
    torch.testing.assert_close(embed_views(embedder, x, tta), embed_views(embedder, x.flip(-1), tta))
    assert not torch.allclose(embedder(x), embedder(x.flip(-1)), atol=1e-3)


def test_embed_with_tta_over_a_dataset_and_errors(embedder: torch.nn.Module) -> None:
    x = images(10, seed=1)
    dataset = InMemoryImages(labels=torch.arange(10), images=x, name="ten")
    plain = embed(embedder, dataset, batch_size=4)
    flipped = embed(embedder, dataset, batch_size=4, tta=TestTimeAugmentation(flip=True))
    assert plain.shape == flipped.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(flipped, axis=1), 1.0, atol=1e-6)
    with torch.inference_mode():
        direct = embed_views(embedder, x, TestTimeAugmentation(flip=True)).numpy()
    np.testing.assert_allclose(flipped, direct, atol=1e-6)

    flat = build_embedder(ModelConfig(pooling="flatten", neck="linear"), channels=1, image_size=16)
    with pytest.raises(ValueError, match="multi-scale .* flattens"):
        embed(flat, dataset, tta=TestTimeAugmentation(scales=(1.0, 1.25)))


def test_parse_and_label() -> None:
    assert TestTimeAugmentation.parse(["flip"]) == TestTimeAugmentation(flip=True)
    parsed = TestTimeAugmentation.parse(["flip", "scales:1,1.25"])
    assert parsed == TestTimeAugmentation(flip=True, scales=(1.0, 1.25))
    assert parsed.label() == "flip + scales 1,1.25" and parsed.n_views == 4
    with pytest.raises(ValueError, match="'mirror' is not known"):
        TestTimeAugmentation.parse(["mirror"])
    with pytest.raises(ValueError, match="must be numbers"):
        TestTimeAugmentation.parse(["scales:1,big"])
    with pytest.raises(ValueError, match="positive"):
        TestTimeAugmentation(scales=(0.0,))
