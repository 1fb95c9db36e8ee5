"""Evaluating a finished run on its validation split: alone, or with ensemble members, test-time
augmentation and post-processing steps scored one after another."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedlab.audit.items import without_items
from embedlab.audit.tables import read_held_out
from embedlab.data.splits import DataSplits, prepare_data
from embedlab.embeddings.encoder import EmbeddingPipeline, EnsembleMember
from embedlab.evaluation import RetrievalResult
from embedlab.evaluation.steps import RetrievalProblem, StepResult, postprocessing_rows, score_step
from embedlab.models.devices import resolve_device
from embedlab.models.tta import TestTimeAugmentation
from embedlab.retrieval.postprocessing import StepConfig
from embedlab.training.run_dir import SPLIT_FILE, load_run, read_json
from embedlab.training.validation import validation_problem


def _embedding_device(device: Any) -> torch.device:
    """Where the models embed for an evaluation on `device`: that device, the GPU for "auto" when torch
    sees one, the CPU for the numpy engine ("cpu")."""
    return device if isinstance(device, torch.device) else resolve_device(str(device), option="--device")


def held_out_data(data: DataSplits, audit_file: str | Path | None) -> DataSplits:
    """The splits with the items an audit CSV marks `held_out` left out of the queries and the gallery
    (None: as they are); an audit that names none of the validation items is an error, since it was
    then made of other data."""
    if audit_file is None:
        return data
    keys = read_held_out(audit_file)
    query, from_queries = without_items(data.query, keys)
    gallery, from_gallery = (None, 0) if data.gallery is None else without_items(data.gallery, keys)
    if keys and from_queries + from_gallery == 0:
        raise ValueError(
            f"none of the {len(keys)} held-out items of {audit_file} is among this run's validation items "
            f"({data.record.get('dataset')}); audit the run's own data (embedlab audit DATA --run RUN_DIR)"
        )
    return dataclasses.replace(data, query=query, gallery=gallery)


def evaluate_run(
    run_dir: str | Path,
    metrics: Sequence[str] | None = None,
    which: str = "best",
    device: Any = "auto",
    exclude_audit: str | Path | None = None,
) -> RetrievalResult:
    """A finished run's checkpoint (best or last) scored on its validation split (device: where the
    model embeds and the exact evaluation computes, as for `evaluate_retrieval`); exclude_audit: an
    audit's leaks.csv or label_conflicts.csv, whose held-out items are left out (`held_out_data`)."""
    run = load_run(run_dir, which)
    cfg = run.config
    data = held_out_data(prepare_data(cfg.data), exclude_audit)
    batch, workers = cfg.train.eval_batch_size, cfg.data.num_workers
    pipeline = EmbeddingPipeline([run.embedder], [1.0], precision=cfg.train.precision)
    pipeline.to(_embedding_device(device))
    query = pipeline.embed_images(data.query, batch, workers, progress=True)
    gallery = (
        None if data.gallery is None else pipeline.embed_images(data.gallery, batch, workers, progress=True)
    )
    problem = validation_problem(query, gallery, data.query, data.gallery)
    return problem.score(metrics or cfg.train.metrics, device=device)


# split.json keys that must agree for runs to be scored on the same validation items.
_SPLIT_KEYS = ("dataset", "validation_split", "gallery", "seed", "query_images", "validation_classes")


def _check_same_split(primary: Path, member: Path) -> None:
    ours, theirs = read_json(primary / SPLIT_FILE), read_json(member / SPLIT_FILE)
    differing = [key for key in _SPLIT_KEYS if ours.get(key) != theirs.get(key)]
    if differing:
        raise ValueError(
            f"ensemble member {member} was trained on another split than {primary} ({SPLIT_FILE} differs in "
            f"{', '.join(differing)}): its training images may include {primary}'s validation items."
        )


@dataclass(frozen=True)
class _Embedded:
    queries: np.ndarray
    gallery: np.ndarray | None
    seconds: float


def evaluate_run_steps(
    run_dir: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    ensemble: Sequence[EnsembleMember] = (),
    tta: TestTimeAugmentation | None = None,
    steps: Sequence[StepConfig] = (),
    which: str = "best",
    device: Any = "auto",
    exclude_audit: str | Path | None = None,
) -> list[StepResult]:
    """Score a run's validation split with each requested step added in turn.

    Rows: the run's model; + the ensemble with the other runs (RUN_DIR has weight 1); + test-time
    augmentation (of every model); then a row per post-processing step, in order (see
    `embedlab.evaluation.steps`). Each member must have been trained on the same split. device: where
    each row is scored (as for `evaluate_retrieval`). exclude_audit: as for `evaluate_run`.
    """
    primary = load_run(run_dir, which)
    for member in ensemble:
        _check_same_split(primary.run_dir, member.run_dir)
    runs = [primary] + [load_run(member.run_dir, which) for member in ensemble]
    pipeline = EmbeddingPipeline(
        embedders=[run.embedder for run in runs],
        weights=[1.0] + [member.weight for member in ensemble],
        precision=primary.config.train.precision,
    ).to(_embedding_device(device))
    cfg = primary.config
    data = held_out_data(prepare_data(cfg.data), exclude_audit)
    metric_names = list(metrics or cfg.train.metrics)
    batch, workers = cfg.train.eval_batch_size, cfg.data.num_workers

    def embed_members(views: EmbeddingPipeline) -> list[_Embedded]:
        embedded = []
        for member in range(len(runs)):
            began = time.perf_counter()
            queries = views.embed_member(member, data.query, batch, workers, progress=True)
            gallery = (
                None if data.gallery is None else views.embed_member(member, data.gallery, batch, workers)
            )
            embedded.append(_Embedded(queries, gallery, time.perf_counter() - began))
        return embedded

    def combined(embedded: list[_Embedded]) -> RetrievalProblem:
        queries = pipeline.combine([e.queries for e in embedded])
        galleries = [e.gallery for e in embedded if e.gallery is not None]
        gallery = pipeline.combine(galleries) if galleries else None
        return validation_problem(queries, gallery, data.query, data.gallery)

    plain = embed_members(pipeline)
    first = validation_problem(plain[0].queries, plain[0].gallery, data.query, data.gallery)
    rows = [score_step("model", first, metric_names, plain[0].seconds, device=device)]
    problem = combined(plain)
    if ensemble:
        label = f"ensemble of {len(runs)} runs, weights {', '.join(f'{w:g}' for w in pipeline.weights)}"
        seconds = sum(e.seconds for e in plain[1:])
        rows.append(score_step(label, problem, metric_names, seconds, device=device))
    views = pipeline.with_tta(tta)
    if tta is not None:
        viewed = embed_members(views)
        problem = combined(viewed)
        seconds = sum(e.seconds for e in viewed)
        rows.append(score_step(f"tta {tta.label()}", problem, metric_names, seconds, device=device))

    def train_embeddings() -> np.ndarray:
        return views.embed_images(data.train, batch, workers)

    rows.extend(
        postprocessing_rows(problem, steps, metric_names, train_embeddings=train_embeddings, device=device)
    )
    return rows
