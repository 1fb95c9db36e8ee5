"""Scoring the validation split: after every epoch (the callback) and for a finished run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedlab.data.images import LabelledImages
from embedlab.data.splits import prepare_data
from embedlab.evaluation import RetrievalResult, evaluate_retrieval, evaluate_scenarios
from embedlab.models.inference import embed
from embedlab.training.run_dir import load_run


def _numpy(values: object) -> np.ndarray | None:
    return None if values is None else values.numpy()  # type: ignore[attr-defined]


def score_validation(
    query_embeddings: np.ndarray,
    gallery_embeddings: np.ndarray | None,
    query: LabelledImages,
    gallery: LabelledImages | None,
    metrics: Sequence[str],
) -> RetrievalResult:
    """Metrics of the queries against the gallery (None: the queries themselves, own rows excluded).

    When the validation set searches itself and carries a CSV's `is_query` / `is_gallery` roles, only
    the items marked as queries are scored, against the items marked as gallery.
    """
    groups = _numpy(query.groups)
    if gallery is None and (query.is_query is not None or query.is_gallery is not None):
        everyone = np.ones(len(query), dtype=bool)
        query_rows = everyone if query.is_query is None else query.is_query.numpy()
        gallery_rows = everyone if query.is_gallery is None else query.is_gallery.numpy()
        return evaluate_scenarios(
            query_embeddings,
            query.labels.numpy(),
            scenarios={"validation": (query_rows, gallery_rows)},
            metrics=list(metrics),
            query_groups=groups,
        )["validation"]
    return evaluate_retrieval(
        query_embeddings,
        query.labels.numpy(),
        gallery_embeddings,
        None if gallery is None else gallery.labels.numpy(),
        metrics=list(metrics),
        query_groups=groups,
        gallery_groups=None if gallery is None else _numpy(gallery.groups),
    )


def evaluate_run(
    run_dir: str | Path, metrics: Sequence[str] | None = None, which: str = "best"
) -> RetrievalResult:
    """A finished run's checkpoint (best or last) scored on its validation split."""
    run = load_run(run_dir, which)
    cfg = run.config
    data = prepare_data(cfg.data)
    batch, workers = cfg.train.eval_batch_size, cfg.data.num_workers
    query = embed(run.embedder, data.query, batch, workers, progress=True)
    gallery = (
        None if data.gallery is None else embed(run.embedder, data.gallery, batch, workers, progress=True)
    )
    return score_validation(query, gallery, data.query, data.gallery, metrics or cfg.train.metrics)
