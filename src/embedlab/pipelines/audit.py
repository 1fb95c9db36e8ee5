"""Auditing a collection (`embedlab audit`): read it as training reads it, embed every image, find
duplicates, leaks, likely label errors and identities that may be one, and write the findings (one CSV
each), audit.json and audit.html into the output folder (docs/audit.md).

Without a run, the images are embedded with a backbone's pooled features (the zero-shot embedder that
training scores at epoch 0); with a run, with that run's best model and its data settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedlab.atomic import atomic_write_text
from embedlab.audit.copies import COPIES, copy_batch
from embedlab.audit.duplicates import (
    DuplicateGroup,
    derive_near_threshold,
    exact_groups,
    held_out_items,
    near_groups,
)
from embedlab.audit.hashing import hash_files
from embedlab.audit.identities import label_errors, merge_candidates, vote_count
from embedlab.audit.items import AuditItems, items_from_splits
from embedlab.audit.neighbours import APPROXIMATE_ABOVE, NeighbourMethod, nearest_neighbours
from embedlab.audit.page import AuditPage, render_page
from embedlab.audit.summary import split_summary
from embedlab.audit.tables import (
    DUPLICATE_COLUMNS,
    LABEL_ERROR_COLUMNS,
    MERGE_COLUMNS,
    UNREADABLE_COLUMNS,
    duplicate_rows,
    label_error_rows,
    merge_rows,
    unreadable_rows,
    write_csv,
)
from embedlab.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from embedlab.data.loaders import resolve_num_workers
from embedlab.data.sources import read_csv, read_folder
from embedlab.data.splits import DEFAULT_FILE_IMAGE_SIZE, prepare_data
from embedlab.embeddings.encoder import EmbeddingPipeline
from embedlab.models.devices import resolve_device
from embedlab.models.embedder import Embedder
from embedlab.models.zero_shot import build_zero_shot_embedder
from embedlab.retrieval.arrays import l2_normalize
from embedlab.training.run_dir import load_run
from embedlab.training.validation import summarize_validation, validation_problem

PAGE_FILE = "audit.html"
SUMMARY_FILE = "audit.json"
#: Neighbours listed per item: near duplicates, votes on labels, and the identities an item is closer to.
NEIGHBOURS = 20
#: The model an audit without a run or a config embeds with (timm's ImageNet weights).
DEFAULT_AUDIT_BACKBONE = "resnet50"


@dataclass(frozen=True)
class AuditOptions:
    """near_threshold: the near-duplicate similarity (None: derived from re-encoded copies, see
    audit/copies.py); neighbours: listed per item; search: auto (exact up to `approximate_above` items,
    then HNSW), exact, hnsw or ivf; copies: images copied to derive the threshold; device: where
    images embed and exact search runs; metrics: validation metrics (default: the run's or config's)."""

    near_threshold: float | None = None
    neighbours: int = NEIGHBOURS
    search: NeighbourMethod = "auto"
    approximate_above: int = APPROXIMATE_ABOVE
    copies: int = COPIES
    batch_size: int = 128
    num_workers: int | None = None
    device: str = "auto"
    metrics: list[str] | None = None
    seed: int = 0


@dataclass
class AuditResult:
    """Where the audit wrote, the threshold it used and how it was found, what it found, the metrics with
    and without the findings, and notes on how far to trust it."""

    out: Path
    page: Path
    threshold: float
    threshold_sentence: str
    counts: dict[str, int]
    metrics: list[tuple[str, int, dict[str, float]]]
    search: str
    recall: float | None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        found = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in self.counts.items())
        searched = self.search + ("" if self.recall is None else f" (recall@k {self.recall:.3f} on a sample)")
        return [self.threshold_sentence, f"neighbours: {searched}", f"found: {found}", f"wrote {self.page}"]


def _check_collection(data: DataConfig) -> None:
    """A folder or CSV of at least two identities; each other case is one clear sentence."""
    path = Path(data.dataset).expanduser()
    if path.suffix.lower() == ".csv":
        source = read_csv(path, 8, 3, Path(data.root) if data.root else None)
    elif path.is_dir():
        source = read_folder(path, 8, 3)
    else:
        raise FileNotFoundError(
            f"{data.dataset} is neither a folder of identities (ROOT/<label>/<image>) nor a .csv file; "
            "an audit reads image files"
        )
    names = source.images.class_names or []
    if len(names) < 2:
        count = len(source.images)
        raise ValueError(
            f"{path} holds one identity ({names[0] if names else '?'}, {count} image{'s' * (count != 1)}): "
            "an audit compares identities, so it needs at least two"
        )


def _embedder_and_settings(
    data: str | Path,
    run_dir: str | Path | None,
    config: ExperimentConfig | None,
    image_size: int | None,
) -> tuple[Embedder, DataConfig, str, list[str], str, list[str]]:
    """(embedder, data config, precision, metrics, what embeds, notes); the collection is checked
    (`_check_collection`) before a model is built."""
    overrides: dict[str, Any] = {"dataset": str(data), "skip_unreadable": True, "max_images_per_split": None}
    if run_dir is not None:
        run = load_run(run_dir)
        cfg = run.config
        data_cfg = cfg.data.model_copy(update=overrides)
        _check_collection(data_cfg)
        described = f"the best checkpoint of {run.run_dir}"
        return run.embedder, data_cfg, cfg.train.precision, list(cfg.train.metrics), described, []
    model_cfg = (
        config.model
        if config is not None
        else ModelConfig(backbone=DEFAULT_AUDIT_BACKBONE, pretrained=True, pooling="gem")
    )
    data_cfg = (config.data if config is not None else DataConfig()).model_copy(update=overrides)
    size = image_size or data_cfg.image_size or DEFAULT_FILE_IMAGE_SIZE
    data_cfg = data_cfg.model_copy(update={"image_size": size})
    _check_collection(data_cfg)
    channels = data_cfg.channels or 3
    with torch.random.fork_rng():
        # Random weights (a test, a first look) are the same on every audit of the same config.
        torch.manual_seed(0)
        embedder = build_zero_shot_embedder(model_cfg, channels, size)
    weights = (
        model_cfg.weights_path
        if model_cfg.weights_path
        else ("pretrained weights" if model_cfg.pretrained else "random weights")
    )
    described = (
        f"the pooled features of {model_cfg.backbone} ({weights}, {model_cfg.pooling} pooling) at {size} px"
    )
    notes = []
    if not model_cfg.pretrained and not model_cfg.weights_path:
        notes.append(
            f"{model_cfg.backbone} has random weights, so its similarities say little about what the "
            "images show: exact duplicates are found as ever, but give pretrained weights (model.pretrained, "
            "model.weights_path) or --run for the other findings"
        )
    metrics = list(config.train.metrics) if config is not None else list(TrainConfig().metrics)
    return embedder, data_cfg, "32-true", metrics, described, notes


def _copy_similarities(
    pipeline: EmbeddingPipeline,
    items: AuditItems,
    embeddings: np.ndarray,
    count: int,
    channels: int,
    image_size: int,
    seed: int,
) -> np.ndarray:
    """Cosine similarity of `count` sampled items to their resized, re-encoded copies."""
    chosen = np.sort(
        np.random.default_rng(seed).choice(len(items), size=min(count, len(items)), replace=False)
    )
    sims = []
    for start in range(0, chosen.size, 64):
        part = chosen[start : start + 64].tolist()
        pixels = copy_batch(
            [items.paths[i] for i in part], [items.boxes[i] for i in part], channels, image_size
        )
        copies = l2_normalize(pipeline.embed_pixels(pixels))
        sims.append((copies * embeddings[part]).sum(axis=1))
    return np.concatenate(sims)


def _metrics_rows(
    embeddings: np.ndarray,
    items: AuditItems,
    held: dict[str, np.ndarray],
    metrics: list[str],
    device: str,
) -> list[tuple[str, int, dict[str, float]]]:
    """(what is held out, queries scored, metrics) for all validation items and then without each set
    of held-out items (audit ids, all of the validation split)."""
    n_train = items.n_train
    gallery = items.train if items.validation_searches_train else None
    gallery_embeddings = embeddings[:n_train] if gallery is not None else None
    rows = []
    for label, members in [("every validation item", np.empty(0, dtype=np.int64)), *held.items()]:
        if label != "every validation item" and members.size == 0:
            continue
        keep = np.setdiff1d(np.arange(len(items.validation)), members - n_train)
        if keep.size == 0:
            continue
        validation = items.validation.subset(torch.from_numpy(keep))
        problem = validation_problem(embeddings[n_train:][keep], gallery_embeddings, validation, gallery)
        if not (problem.positive_counts() > 0).any():
            continue
        result = problem.score(metrics, device=device)
        rows.append((label, result.n_queries - result.n_queries_without_positives, dict(result.metrics)))
    return rows


def _leaks(group: DuplicateGroup) -> bool:
    return group.is_leak


def _conflicts(group: DuplicateGroup) -> bool:
    return group.is_conflict


def audit_dataset(
    data: str | Path,
    out: str | Path,
    *,
    run_dir: str | Path | None = None,
    config: ExperimentConfig | None = None,
    image_size: int | None = None,
    options: AuditOptions | None = None,
    progress: bool = False,
) -> AuditResult:
    """Audit the folder or CSV `data` into the folder `out` (see the module docstring). config: its data
    section (split, roles, root, channels) and, without a run, its model; image_size: the side images
    embed at without a run (default: the config's, else 224)."""
    options = options or AuditOptions()
    embedder, data_cfg, precision, metrics, described, notes = _embedder_and_settings(
        data, run_dir, config, image_size
    )
    splits = prepare_data(data_cfg, progress=progress)
    notes.extend(splits.notes)
    items = items_from_splits(splits)
    device = resolve_device(options.device)
    workers = resolve_num_workers(options.num_workers, feeds_cuda=device.type == "cuda")
    hashes = hash_files(items.paths, items.boxes, splits.channels, num_workers=workers, progress=progress)

    pipeline = EmbeddingPipeline([embedder], [1.0], precision=precision).to(device)
    embeddings = l2_normalize(
        np.concatenate(
            [
                pipeline.embed_images(items.train, options.batch_size, workers, progress),
                pipeline.embed_images(items.validation, options.batch_size, workers, progress),
            ]
        )
    )
    neighbours = nearest_neighbours(
        embeddings,
        options.neighbours,
        method=options.search,
        device=str(device),
        approximate_above=options.approximate_above,
    )
    if options.near_threshold is not None:
        threshold = options.near_threshold
        sentence = f"near duplicates: similarity at least {threshold:.4f} (as given)"
    else:
        copies = _copy_similarities(
            pipeline, items, embeddings, options.copies, splits.channels, splits.image_size, options.seed
        )
        threshold = derive_near_threshold(copies)
        sentence = (
            f"near duplicates: similarity at least {threshold:.4f}, which 95% of {copies.size} resized, "
            f"re-encoded copies of the collection's own images reach (median {np.median(copies):.4f})"
        )

    exact = exact_groups(hashes, items)
    near = near_groups(neighbours.ids, neighbours.similarities, threshold, hashes, items)
    groups = exact + near
    sizes = np.bincount(items.labels, minlength=len(items.label_names))
    errors = label_errors(
        neighbours.ids,
        neighbours.similarities,
        items.labels,
        vote_count(sizes[sizes > 0], neighbours.ids.shape[1]),
    )
    merges = merge_candidates(neighbours.ids, neighbours.similarities, items.labels)

    leaks = [g for g in groups if g.is_leak]
    conflicts = [g for g in groups if g.is_conflict]
    held = {
        "without the leaking items": held_out_items(leaks, items),
        "without the conflicting items": held_out_items(conflicts, items),
        "without both": held_out_items(leaks + conflicts, items),
    }
    metric_rows = _metrics_rows(embeddings, items, held, metrics, str(device))
    summary = split_summary(items)
    summary["queries_without_positives"] = summarize_validation(
        items.validation, items.train if items.validation_searches_train else None
    ).without_positives

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "exact_duplicates.csv", DUPLICATE_COLUMNS, duplicate_rows(exact, "exact", items))
    write_csv(out / "near_duplicates.csv", DUPLICATE_COLUMNS, duplicate_rows(near, "near", items))
    for name, keep in (("leaks.csv", _leaks), ("label_conflicts.csv", _conflicts)):
        table = duplicate_rows(exact, "exact", items, keep) + duplicate_rows(near, "near", items, keep)
        write_csv(out / name, DUPLICATE_COLUMNS, table)
    write_csv(out / "label_errors.csv", LABEL_ERROR_COLUMNS, label_error_rows(errors, items))
    write_csv(out / "merge_candidates.csv", MERGE_COLUMNS, merge_rows(merges, items))
    write_csv(out / "unreadable.csv", UNREADABLE_COLUMNS, unreadable_rows(splits.skipped))

    counts = {
        "exact_duplicate_groups": len(exact),
        "near_duplicate_groups": len(near),
        "leaks": len(leaks),
        "label_conflicts": len(conflicts),
        "likely_label_errors": int(errors.items.size),
        "merge_candidates": int(merges.first.size),
        "unreadable_images": len(splits.skipped),
    }
    page = AuditPage(
        title=str(data),
        model=described,
        threshold_sentence=sentence,
        notes=notes,
        summary=summary,
        metrics=metric_rows,
        exact=exact,
        near=near,
        errors=errors,
        merges=merges,
        unreadable=splits.skipped,
    )
    record = {
        "data": str(data),
        "embedded_with": described,
        "near_threshold": threshold,
        "threshold": sentence,
        "search": neighbours.method,
        "recall": neighbours.recall,
        "label_error_votes": errors.k,
        "counts": counts,
        "summary": summary,
        "metrics": [{"scored": label, "queries": n, "metrics": values} for label, n, values in metric_rows],
        "notes": notes,
    }
    atomic_write_text(out / SUMMARY_FILE, json.dumps(record, indent=2) + "\n")
    page_path = out / PAGE_FILE
    atomic_write_text(page_path, render_page(page, items))
    return AuditResult(
        out=out,
        page=page_path,
        threshold=threshold,
        threshold_sentence=sentence,
        counts=counts,
        metrics=metric_rows,
        search=neighbours.method,
        recall=neighbours.recall,
        notes=notes,
    )
