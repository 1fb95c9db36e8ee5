"""Ensembles of embedding models: each model's L2-normalised embeddings scaled by its weight,
concatenated, and normalised again (the Google Landmark Retrieval 2020 winner weighted four models
1, 0.8, 0.55 and 0.5), so that the cosine similarity of two items is the weighted mean of the models'
cosine similarities (the weights squared, over their sum of squares)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embedlab.retrieval.arrays import as_embedding_matrix, l2_normalize


def concatenate_embeddings(parts: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
    """normalise([w_1 * normalise(e_1), ..., w_m * normalise(e_m)]) row by row, float32 (N, sum D_i)."""
    if not parts:
        raise ValueError("an ensemble needs at least one model's embeddings.")
    if len(weights) != len(parts):
        raise ValueError(f"got {len(parts)} embedding sets but {len(weights)} weights.")
    if any(w <= 0 for w in weights):
        raise ValueError(f"ensemble weights must be positive, got {list(weights)}.")
    matrices = [as_embedding_matrix(part, f"ensemble member {i}") for i, part in enumerate(parts)]
    rows = {m.shape[0] for m in matrices}
    if len(rows) != 1:
        raise ValueError(
            f"ensemble members must embed the same items, got row counts {[m.shape[0] for m in matrices]}."
        )
    scaled = [np.float32(w) * l2_normalize(m) for m, w in zip(matrices, weights, strict=True)]
    return l2_normalize(np.concatenate(scaled, axis=1))


def combine_members(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """An ensemble's embeddings; one member's are returned as they are (not normalised again, which
    would move float32 values by an ulp and reorder near-ties against that model evaluated alone)."""
    return parts[0] if len(parts) == 1 else concatenate_embeddings(parts, weights)
