"""`evaluate_run`: a finished run's best checkpoint scored on its validation split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embedlab.data.splits import prepare_data
from embedlab.evaluation import RetrievalResult, evaluate_retrieval
from embedlab.models.inference import embed
from embedlab.training.run_dir import load_run


def evaluate_run(
    run_dir: str | Path, metrics: Sequence[str] | None = None, which: str = "best"
) -> RetrievalResult:
    run = load_run(run_dir, which)
    cfg = run.config
    data = prepare_data(cfg.data)
    batch = cfg.train.eval_batch_size
    query = embed(run.embedder, data.query, batch, cfg.data.num_workers, progress=True)
    gallery = (
        None if data.gallery is None else embed(run.embedder, data.gallery, batch, cfg.data.num_workers, True)
    )
    return evaluate_retrieval(
        query,
        data.query.labels.numpy(),
        gallery,
        None if data.gallery is None else data.gallery.labels.numpy(),
        metrics=list(metrics or cfg.train.metrics),
        query_groups=None if data.query.groups is None else data.query.groups.numpy(),
        gallery_groups=None
        if data.gallery is None or data.gallery.groups is None
        else data.gallery.groups.numpy(),
    )
