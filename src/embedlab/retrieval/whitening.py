"""PCA whitening of embeddings (Jegou and Chum, "Negative evidences and co-occurrences in image
retrieval", ECCV 2012), learned without labels on training or gallery embeddings.

x' = normalise(diag(lambda_1..d)^(-1/2) U_d^T (x - mean)): the embeddings are centred, projected on the
d leading principal axes and each axis scaled to unit variance, so that directions shared by everything
(bursts, the common component of a collection) stop dominating the cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedlab.atomic import atomic_write
from embedlab.retrieval.arrays import as_embedding_matrix, l2_normalize

# Eigenvalues below this share of the largest are treated as this share, so that near-empty directions
# are not blown up to unit variance.
_EIGENVALUE_FLOOR = 1e-6


@dataclass(frozen=True)
class PCAWhitening:
    """mean (D,) and projection (D, d) float64: x' = normalise((x - mean) @ projection)."""

    mean: np.ndarray
    projection: np.ndarray

    @property
    def input_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.projection.shape[1])

    @classmethod
    def fit(cls, embeddings: Any, dim: int) -> PCAWhitening:
        """Learn the whitening of (N, D) embeddings (L2-normalised first) down to `dim` dimensions.

        Each axis's sign is fixed so that its largest entry is positive, which makes the result
        reproducible. Raises ValueError when dim exceeds D or N - 1 (the rank of the centred data).
        """
        x = l2_normalize(as_embedding_matrix(embeddings, "whitening embeddings")).astype(np.float64)
        n, d = x.shape
        if not 1 <= dim <= min(d, n - 1):
            raise ValueError(
                f"the whitening dimension must lie in [1, {min(d, n - 1)}] for {n} embeddings of dimension "
                f"{d} (at most D and N - 1), got {dim}."
            )
        mean = x.mean(axis=0)
        centred = x - mean
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (n - 1))
        order = np.argsort(eigenvalues)[::-1][:dim]
        eigenvalues = np.maximum(eigenvalues[order], _EIGENVALUE_FLOOR * eigenvalues[order[0]])
        axes = eigenvectors[:, order]
        largest = axes[np.abs(axes).argmax(axis=0), np.arange(dim)]
        axes = axes * np.sign(largest)
        return cls(mean=mean, projection=axes / np.sqrt(eigenvalues))

    def transform(self, embeddings: Any) -> np.ndarray:
        """Whitened, L2-normalised float32 rows (N, d) of (N, D) embeddings (L2-normalised first)."""
        x = l2_normalize(as_embedding_matrix(embeddings, "embeddings to whiten")).astype(np.float64)
        if x.shape[1] != self.input_dim:
            raise ValueError(
                f"the whitening was learned on {self.input_dim}-d embeddings, got {x.shape[1]}-d ones."
            )
        return l2_normalize(((x - self.mean) @ self.projection).astype(np.float32))

    def save(self, path: str | Path) -> None:
        """Write mean and projection to an .npz file atomically."""
        atomic_write(path, lambda stream: np.savez(stream, mean=self.mean, projection=self.projection))

    @classmethod
    def load(cls, path: str | Path) -> PCAWhitening:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(mean=data["mean"], projection=data["projection"])
