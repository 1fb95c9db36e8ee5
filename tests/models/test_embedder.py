import pytest
import torch

from embedlab.config import ModelConfig
from embedlab.models import build_embedder
from embedlab.models.pooling import POOLING


def test_embeddings_are_unit_length_of_the_configured_size() -> None:
    embedder = build_embedder(ModelConfig(embedding_dim=24), channels=1, image_size=28).eval()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    embeddings = embedder(images)
    assert embeddings.shape == (5, 24)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(5), atol=1e-5)
    assert embedder.embedding_dim == 24


def test_embedder_resizes_input_of_another_size() -> None:
    embedder = build_embedder(ModelConfig(), channels=1, image_size=28).eval()
    assert embedder(torch.randint(0, 256, (2, 1, 40, 40), dtype=torch.uint8)).shape == (2, 128)


def test_pretrained_statistics_are_used_for_timm_backbones() -> None:
    embedder = build_embedder(ModelConfig(backbone="resnet18", pooling="avg"), channels=3, image_size=32)
    assert torch.allclose(embedder.preprocess.mean, torch.tensor([0.485, 0.456, 0.406]), atol=1e-3)
    grey = build_embedder(ModelConfig(backbone="resnet18"), channels=1, image_size=32)
    assert grey.preprocess.mean.shape == (1,)


def test_flatten_and_linear_neck_rebuild_the_metric_learning_example_network() -> None:
    cfg = ModelConfig(backbone="pml_mnist_example", pooling="flatten", neck="linear", embedding_dim=50)
    embedder = build_embedder(cfg, channels=1, image_size=28)
    assert embedder.neck.linear.in_features == 9216 and embedder.neck.linear.bias is not None
    assert all(module.training for module in embedder.modules())  # sizing the neck left the mode alone
    embeddings = embedder.eval()(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
    assert embeddings.shape == (3, 50)


@pytest.mark.parametrize("pooling", POOLING.names())
@pytest.mark.parametrize(
    ("backbone", "channels", "image_size"),
    [("small_cnn", 1, 28), ("pml_mnist_example", 1, 28), ("small_resnet", 1, 20), ("resnet18", 3, 57)],
)
def test_the_pooling_reports_the_size_the_neck_receives(
    pooling: str, backbone: str, channels: int, image_size: int
) -> None:
    cfg = ModelConfig(backbone=backbone, pooling=pooling)
    embedder = build_embedder(cfg, channels=channels, image_size=image_size).eval()
    images = torch.randint(0, 256, (2, channels, image_size, image_size), dtype=torch.uint8)
    pooled = embedder.pooling(embedder.backbone(embedder.preprocess(images)))
    reported = embedder.pooling.output_features(embedder.backbone.num_features)
    assert pooled.shape == (2, reported) and embedder.neck.linear.in_features == reported
