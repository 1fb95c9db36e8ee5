"""From images to an index's vectors: one model or an ensemble, optional test-time views, optional PCA
whitening. The same pipeline embeds the gallery when an index is built and every query after, so that
both sides always meet in the same space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embedlab.data.images import LabelledImages
from embedlab.models.embedder import Embedder
from embedlab.models.inference import embed
from embedlab.models.tta import TestTimeAugmentation, check_supports, embed_views
from embedlab.retrieval.ensemble import combine_members
from embedlab.retrieval.whitening import PCAWhitening
from embedlab.serving.index import PostprocessingRecord

#: Query images embedded per forward pass when many are searched at once.
QUERY_BATCH = 64


def tta_of(record: PostprocessingRecord) -> TestTimeAugmentation | None:
    if not record.tta_flip and record.tta_scales == [1.0]:
        return None
    return TestTimeAugmentation(flip=record.tta_flip, scales=tuple(record.tta_scales))


@dataclass
class EmbeddingPipeline:
    """embedders with their ensemble weights (the first is the index's model), test-time views, and
    the whitening learned on the gallery (None until `fit_whitening`, or when not used)."""

    embedders: list[Embedder]
    weights: list[float]
    tta: TestTimeAugmentation | None = None
    whitening: PCAWhitening | None = None

    def __post_init__(self) -> None:
        for embedder in self.embedders:
            embedder.eval()
            if self.tta is not None:
                check_supports(embedder, self.tta)

    def _finish(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        combined = combine_members(parts, self.weights)
        return combined if self.whitening is None else self.whitening.transform(combined)

    def embed_images(
        self, images: LabelledImages, batch_size: int, num_workers: int = 0, progress: bool = False
    ) -> np.ndarray:
        """Vectors (N, D) of a collection, before whitening when none has been fitted yet."""
        parts = [embed(e, images, batch_size, num_workers, progress, tta=self.tta) for e in self.embedders]
        return self._finish(parts)

    @torch.inference_mode()
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 images (B, C, S, S) -> the index's vectors (B, D) float32."""
        parts = []
        for embedder in self.embedders:
            chunks = []
            for start in range(0, len(pixels), QUERY_BATCH):
                batch = torch.from_numpy(pixels[start : start + QUERY_BATCH])
                vectors = embedder(batch) if self.tta is None else embed_views(embedder, batch, self.tta)
                chunks.append(vectors.float().numpy())
            parts.append(
                np.concatenate(chunks) if chunks else np.zeros((0, embedder.embedding_dim), np.float32)
            )
        return self._finish(parts)

    def fit_whitening(self, gallery_vectors: np.ndarray, dim: int) -> np.ndarray:
        """Learn the whitening on the gallery's vectors and return them whitened."""
        self.whitening = PCAWhitening.fit(gallery_vectors, dim)
        return self.whitening.transform(gallery_vectors)
