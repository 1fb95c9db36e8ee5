"""The one embedding pipeline: a model or an ensemble of weighted members, each with optional test-time
views, from images to unit vectors. Evaluation, indexing and serving all embed through it, so that a
gallery and its queries always meet in the same space (post-processing steps come after it, see
`embedlab.retrieval.postprocessing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from embedlab.data.images import LabelledImages
from embedlab.models.embedder import Embedder
from embedlab.models.inference import BatchSplitter, embed, embedding_forward
from embedlab.models.tta import TestTimeAugmentation, check_supports
from embedlab.retrieval.ensemble import combine_members

#: Query images embedded per forward pass when many are searched at once.
QUERY_BATCH = 64


@dataclass(frozen=True)
class EnsembleMember:
    """Another run whose embeddings join the ensemble, with its weight."""

    run_dir: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> EnsembleMember:
        """ "RUN_DIR" or "RUN_DIR:WEIGHT" (a colon followed by something other than a number is part of
        the path)."""
        path, _, weight = text.rpartition(":")
        if path:
            try:
                return cls(Path(path), float(weight))
            except ValueError:
                pass
        return cls(Path(text))


@dataclass
class EmbeddingPipeline:
    """embedders with their ensemble weights (the first is the main model) and the test-time views every
    one of them embeds; `precision` is the main run's train.precision, whose autocast embedding uses.
    Each member embeds on its own device (`to` moves them all)."""

    embedders: list[Embedder]
    weights: list[float]
    tta: TestTimeAugmentation | None = None
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.embedders):
            raise ValueError(f"got {len(self.embedders)} embedders but {len(self.weights)} weights.")
        for embedder in self.embedders:
            embedder.eval()
            if self.tta is not None:
                check_supports(embedder, self.tta)

    def to(self, device: torch.device) -> EmbeddingPipeline:
        """Every member moved to `device` (in place); returns the pipeline."""
        for embedder in self.embedders:
            embedder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.embedders[0].parameters()).device

    def with_tta(self, tta: TestTimeAugmentation | None) -> EmbeddingPipeline:
        """The same members embedding the views of `tta`."""
        return replace(self, tta=tta)

    def combine(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's vectors (N, sum D_i) of every member's (N, D_i) (see retrieval.ensemble)."""
        return combine_members(parts, self.weights)

    def embed_member(
        self,
        member: int,
        images: LabelledImages,
        batch_size: int,
        num_workers: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        """One member's vectors (N, D_member) of a collection, with the pipeline's views."""
        return embed(
            self.embedders[member],
            images,
            batch_size,
            num_workers,
            progress,
            tta=self.tta,
            precision=self.precision,
        )

    def embed_images(
        self, images: LabelledImages, batch_size: int, num_workers: int = 0, progress: bool = False
    ) -> np.ndarray:
        """The pipeline's vectors (N, D) of a collection."""
        parts = [
            self.embed_member(m, images, batch_size, num_workers, progress)
            for m in range(len(self.embedders))
        ]
        return self.combine(parts)

    @torch.inference_mode()
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 images (B, C, S, S) -> the pipeline's vectors (B, D) float32."""
        parts = []
        for embedder in self.embedders:
            device = next(embedder.parameters()).device
            split = BatchSplitter(embedding_forward(embedder, self.tta, self.precision), QUERY_BATCH)
            chunks = [
                split(torch.from_numpy(pixels[start : start + QUERY_BATCH]).to(device)).cpu().numpy()
                for start in range(0, len(pixels), QUERY_BATCH)
            ]
            parts.append(
                np.concatenate(chunks) if chunks else np.zeros((0, embedder.embedding_dim), np.float32)
            )
        return self.combine(parts)
