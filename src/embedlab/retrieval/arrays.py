"""Embedding and id arrays checked and prepared for search: (N, D) float32 matrices, 1-D int64 ids."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

SimilarityMetric = Literal["cosine", "inner_product"]

SIMILARITY_METRICS: tuple[SimilarityMetric, ...] = ("cosine", "inner_product")

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (detached, moved to the CPU) or a sequence."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def as_embedding_matrix(embeddings: Any, name: str = "embeddings") -> np.ndarray:
    """Validate (N, D) finite embeddings and return them as C-contiguous float32.

    Raises ValueError for another number of dimensions, a non-numeric dtype, zero columns, or NaN/inf.
    """
    array = to_numpy(embeddings)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}.")
    if array.shape[1] == 0:
        raise ValueError(f"{name} has no columns (shape {array.shape}); embeddings need D >= 1.")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad.size} row(s), first at row {int(bad[0])}; "
            "fix the model output (or drop those rows) before evaluating."
        )
    return array


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, float32 (N, D); all-zero rows stay zero (similarity 0 to all)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(embeddings / norms, dtype=np.float32)


def prepare_embeddings(embeddings: np.ndarray, metric: SimilarityMetric) -> np.ndarray:
    """The float32 matrix whose inner products are the requested similarity."""
    check_choice(metric, SIMILARITY_METRICS, "metric")
    return l2_normalize(embeddings) if metric == "cosine" else embeddings


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def check_inner_products_finite(queries: np.ndarray, gallery: np.ndarray) -> None:
    # Cauchy-Schwarz bounds every inner product, so one product of maxima rules out float32 overflow
    # (which would turn similarities into inf and break the ranking).
    def largest_norm(x: np.ndarray) -> float:
        # Squared norms accumulated in float64, so huge rows report a huge bound instead of overflowing.
        return math.sqrt(float(np.einsum("ij,ij->i", x, x, dtype=np.float64).max()))

    bound = largest_norm(queries) * largest_norm(gallery)
    if not bound < _FLOAT32_MAX / 2:
        raise ValueError(
            "inner products of these embeddings can overflow float32 (max norm product "
            f"{bound:.3g}); rescale them or use metric='cosine'."
        )


def as_id_vector(values: Any, name: str, length: int) -> np.ndarray:
    """Validate a 1-D integer array of the given length (labels or group ids) and return it as int64.

    An (N, 1) column is refused, not broadcast: comparing it with a 1-D array silently builds an N x N
    matrix (METRICS.md, "Setting").
    """
    array = to_numpy(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of length {length}, got shape {array.shape}"
            + ("; flatten the column with .reshape(-1)." if array.ndim == 2 and 1 in array.shape else ".")
        )
    if array.shape[0] != length:
        raise ValueError(f"{name} has length {array.shape[0]} but the embeddings have {length} rows.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(
            f"{name} must hold integers, got dtype {array.dtype}; map the values to integer ids first "
            "(for example with numpy.unique(values, return_inverse=True))."
        )
    return array.astype(np.int64, copy=False)


def prepare_pair(queries: Any, gallery: Any, metric: SimilarityMetric) -> tuple[np.ndarray, np.ndarray]:
    """Validated, prepared float32 queries (Nq, D) and gallery (Ng, D); the same object twice stays one."""
    q = as_embedding_matrix(queries, "queries")
    g = q if gallery is queries else as_embedding_matrix(gallery, "gallery")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty; retrieval needs at least one gallery item.")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has dimension {g.shape[1]}.")
    qp = prepare_embeddings(q, metric)
    gp = qp if g is q else prepare_embeddings(g, metric)
    if metric == "inner_product":
        check_inner_products_finite(qp, gp)
    return qp, gp


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct row ids of n_rows (all of them when size >= n_rows), ascending."""
    if size >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False)).astype(np.int64)
