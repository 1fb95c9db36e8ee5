"""The embedding pipeline: each member embedded with the views, the ensemble combined as
retrieval.ensemble does, images and raw pixels alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.config import ModelConfig
from embedlab.data.images import InMemoryImages
from embedlab.embeddings.encoder import EmbeddingPipeline, EnsembleMember
from embedlab.models import build_embedder
from embedlab.models.inference import embed
from embedlab.models.tta import TestTimeAugmentation
from embedlab.retrieval.ensemble import concatenate_embeddings


def images(n: int = 5) -> InMemoryImages:
    pixels = torch.randint(
        0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return InMemoryImages(labels=torch.zeros(n, dtype=torch.long), images=pixels)


def embedders() -> list:
    torch.manual_seed(0)
    return [build_embedder(ModelConfig(embedding_dim=dim), channels=1, image_size=8) for dim in (8, 4)]


def test_an_ensemble_with_views_is_its_members_combined() -> None:
    flip = TestTimeAugmentation(flip=True)
    models = embedders()
    pipeline = EmbeddingPipeline(models, [1.0, 0.5], tta=flip)
    data = images()
    expected = concatenate_embeddings([embed(m, data, tta=flip) for m in models], [1.0, 0.5])
    np.testing.assert_allclose(pipeline.embed_images(data, batch_size=2), expected, atol=1e-6)
    np.testing.assert_allclose(pipeline.embed_pixels(data.images.numpy()), expected, atol=1e-5)
    np.testing.assert_array_equal(pipeline.embed_member(1, data, 512), embed(models[1], data, tta=flip))
    assert pipeline.embed_pixels(data.images.numpy()[:0]).shape == (0, 12)


def test_one_model_is_its_own_embeddings_and_weights_match_members() -> None:
    model = embedders()[0]
    data = images()
    np.testing.assert_array_equal(
        EmbeddingPipeline([model], [1.0]).embed_images(data, 512), embed(model, data)
    )
    with pytest.raises(ValueError, match="2 embedders but 1 weights"):
        EmbeddingPipeline(embedders(), [1.0])


def test_ensemble_member_parsing() -> None:
    assert EnsembleMember.parse("runs/a:0.8") == EnsembleMember(Path("runs/a"), 0.8)
    assert EnsembleMember.parse("runs/a") == EnsembleMember(Path("runs/a"), 1.0)
    assert EnsembleMember.parse("runs/a:b") == EnsembleMember(Path("runs/a:b"), 1.0)
