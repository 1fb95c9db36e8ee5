"""The .npy files of `embedlab evaluate`: loaded, checked (errors name the file and shape), evaluated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedlab.evaluation.engine import evaluate_retrieval
from embedlab.evaluation.results import RetrievalResult
from embedlab.metric_names import DEFAULT_METRICS
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.load(Path(path), allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} file {str(path)!r} is not a readable .npy array: {error}") from error


def _expect_matrix(array: np.ndarray, path: str | Path, what: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{what} file {str(path)!r} holds shape {array.shape}; expected (N, D).")


def _expect_vector(array: np.ndarray, length: int, path: str | Path, what: str) -> None:
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{what} file {str(path)!r} holds shape {array.shape}; expected ({length},).")


@dataclass(frozen=True)
class EmbeddingFiles:
    """The arrays of `embedlab evaluate`'s .npy files, checked (gallery and groups optional)."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray | None = None
    gallery_labels: np.ndarray | None = None
    query_groups: np.ndarray | None = None
    gallery_groups: np.ndarray | None = None


def load_embedding_files(
    query_embeddings_path: str | Path,
    query_labels_path: str | Path,
    gallery_embeddings_path: str | Path | None = None,
    gallery_labels_path: str | Path | None = None,
    groups_path: str | Path | None = None,
) -> EmbeddingFiles:
    """Load and check the .npy files of `embedlab evaluate`.

    Query embeddings (Nq, D) and labels (Nq,); optionally gallery embeddings (Ng, D) and labels (Ng,),
    given together; optionally ignore-group ids: (Nq,) without a gallery, or (Nq + Ng,) with one (the
    query items first, then the gallery items). Errors name the file and the shape it holds.
    """
    if (gallery_embeddings_path is None) != (gallery_labels_path is None):
        raise ValueError("give both the gallery embeddings and the gallery labels files, or neither.")
    queries = _load_npy(query_embeddings_path, "query embeddings")
    _expect_matrix(queries, query_embeddings_path, "query embeddings")
    query_labels = _load_npy(query_labels_path, "query labels")
    _expect_vector(query_labels, queries.shape[0], query_labels_path, "query labels")
    gallery = gallery_labels = None
    if gallery_embeddings_path is not None and gallery_labels_path is not None:
        gallery = _load_npy(gallery_embeddings_path, "gallery embeddings")
        _expect_matrix(gallery, gallery_embeddings_path, "gallery embeddings")
        gallery_labels = _load_npy(gallery_labels_path, "gallery labels")
        _expect_vector(gallery_labels, gallery.shape[0], gallery_labels_path, "gallery labels")
    query_groups = gallery_groups = None
    if groups_path is not None:
        groups = _load_npy(groups_path, "groups")
        n_query = queries.shape[0]
        expected = n_query + (0 if gallery is None else gallery.shape[0])
        _expect_vector(groups, expected, groups_path, "groups")
        query_groups = groups[:n_query]
        gallery_groups = None if gallery is None else groups[n_query:]
    return EmbeddingFiles(queries, query_labels, gallery, gallery_labels, query_groups, gallery_groups)


def evaluate_embedding_files(
    query_embeddings_path: str | Path,
    query_labels_path: str | Path,
    gallery_embeddings_path: str | Path | None = None,
    gallery_labels_path: str | Path | None = None,
    groups_path: str | Path | None = None,
    metrics: Sequence[str] | str | None = None,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    device: Any = "auto",
) -> RetrievalResult:
    """Evaluate embeddings saved as .npy files (for `embedlab evaluate`; the files as in
    `load_embedding_files`). metrics: names or a comma-separated string; None means DEFAULT_METRICS.
    device: as for `evaluate_retrieval`."""
    files = load_embedding_files(
        query_embeddings_path, query_labels_path, gallery_embeddings_path, gallery_labels_path, groups_path
    )
    return evaluate_retrieval(
        files.queries,
        files.query_labels,
        files.gallery,
        files.gallery_labels,
        metrics=DEFAULT_METRICS if metrics is None else metrics,
        query_groups=files.query_groups,
        gallery_groups=files.gallery_groups,
        max_memory_bytes=max_memory_bytes,
        device=device,
    )
