"""The zero-shot embedder: normalise(pooling(backbone(preprocess(x)))), no neck, for each head and pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedlab.config import ModelConfig
from embedlab.data.images import InMemoryImages
from embedlab.models import build_embedder
from embedlab.models.backbones import create_backbone
from embedlab.models.inference import embed
from embedlab.models.pooling import GeM, gem
from embedlab.models.tta import TestTimeAugmentation
from embedlab.models.zero_shot import ZeroShotEmbedder, build_zero_shot_embedder, zero_shot_embedder


def _pixels(n: int = 6, channels: int = 1, size: int = 28) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


#: What each pooling computes over (B, C, H, W), by hand: flatten's zero-shot features are the average.
BY_HAND = {
    "gem": lambda maps, cfg: gem(maps, cfg.gem_p),
    "avg": lambda maps, cfg: maps.mean(dim=(-2, -1)),
    "max": lambda maps, cfg: maps.amax(dim=(-2, -1)),
    "flatten": lambda maps, cfg: maps.mean(dim=(-2, -1)),
}


@pytest.mark.parametrize("pooling", sorted(BY_HAND))
def test_the_output_is_the_normalised_pooling_of_the_backbone_map(pooling: str) -> None:
    cfg = ModelConfig(pooling=pooling, gem_p=2.5, embedding_dim=8)
    torch.manual_seed(0)
    zero_shot = build_zero_shot_embedder(cfg, channels=1, image_size=28)
    images = _pixels()
    with torch.no_grad():
        maps = zero_shot.backbone(zero_shot.preprocess(images))  # (B, C, H, W)
        expected = F.normalize(BY_HAND[pooling](maps, cfg), dim=-1)
        output = zero_shot(images)
    assert maps.ndim == 4 and output.shape == (6, maps.shape[1]) == (6, zero_shot.embedding_dim)
    assert torch.allclose(output, expected, atol=1e-6)
    assert torch.allclose(output.norm(dim=1), torch.ones(6), atol=1e-5)
    assert not zero_shot.training  # built for embedding, in eval mode


def test_gem_runs_at_its_initial_exponent_and_no_neck_is_kept() -> None:
    zero_shot = build_zero_shot_embedder(ModelConfig(gem_p=4.0), channels=1, image_size=28)
    assert isinstance(zero_shot.pooling, GeM) and zero_shot.pooling.p.item() == 4.0
    assert isinstance(zero_shot.neck, torch.nn.Identity)
    assert not any("linear" in name or "neck" in name for name, _ in zero_shot.named_parameters())


def test_wrapping_an_embedder_shares_its_modules_before_training() -> None:
    embedder = build_embedder(ModelConfig(embedding_dim=8), channels=1, image_size=28)
    zero_shot = zero_shot_embedder(embedder)
    assert zero_shot.backbone is embedder.backbone and zero_shot.preprocess is embedder.preprocess
    assert zero_shot.pooling is embedder.pooling
    assert isinstance(zero_shot, ZeroShotEmbedder)


def test_the_dolg_head_gives_the_global_branchs_pooling_of_the_last_stage() -> None:
    cfg = ModelConfig(backbone="resnet18", head="dolg", pooling="avg", dolg={"local_dim": 8})
    zero_shot = build_zero_shot_embedder(cfg, channels=3, image_size=32)
    images = _pixels(4, channels=3, size=32)
    with torch.no_grad():
        _, last = zero_shot.backbone(zero_shot.preprocess(images))  # resnet18's layer4: (B, 512, 1, 1)
        expected = F.normalize(last.mean(dim=(-2, -1)), dim=-1)
        output = zero_shot(images)
    assert zero_shot.embedding_dim == 512 and output.shape == (4, 512)
    assert torch.allclose(output, expected, atol=1e-6)
    # the local branch and the projection start random: nothing of them is kept
    assert not any("local_branch" in n or "projection" in n for n, _ in zero_shot.named_parameters())


def test_a_local_weights_file_reaches_the_zero_shot_backbone(tmp_path) -> None:
    source = create_backbone("small_cnn", in_chans=1)
    path = tmp_path / "small_cnn.pth"
    torch.save(source.model.state_dict(), path)
    zero_shot = build_zero_shot_embedder(ModelConfig(weights_path=str(path)), channels=1, image_size=28)
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(zero_shot.backbone.model.state_dict()[name], tensor), name


def test_embed_and_test_time_views_take_it_as_any_embedder() -> None:
    zero_shot = build_zero_shot_embedder(ModelConfig(), channels=1, image_size=28)
    images = InMemoryImages(labels=torch.arange(6) % 3, images=_pixels())
    vectors = embed(zero_shot, images, batch_size=4)
    with torch.no_grad():
        direct = zero_shot(images.images).numpy()
    assert vectors.shape == (6, zero_shot.embedding_dim)
    np.testing.assert_allclose(vectors, direct, atol=1e-6)
    views = embed(zero_shot, images, batch_size=4, tta=TestTimeAugmentation(flip=True, scales=(1.0, 1.25)))
    assert views.shape == vectors.shape and np.allclose(np.linalg.norm(views, axis=1), 1.0, atol=1e-5)
