"""The open-set threshold: the similarity below which a query is answered "new identity".

Protocol (open-set identification, as in face and animal re-identification; ISO/IEC 19795-1 calls
these mated and non-mated searches). Every query is searched against a gallery, with its own image
and its ignore group excluded:

- mated search: a query whose identity has a gallery item. At threshold t it is a *true match* when
  its top-1 item has its identity and a similarity >= t; it is *accepted* when that similarity >= t.
- non-mated search: the query searched against the gallery without its identity; its score s is the
  best similarity to another identity, and it is a *false match* when s >= t. For a query whose
  identity is absent from the gallery this is simply its search; for one whose identity is present,
  removing the identity simulates a new individual photographed the same way. So every query gives
  one non-mated search, and every query with a mate gives one mated search too.

TMR(t) = true matches / mated searches; FMR(t) = false matches / non-mated searches.
Known-vs-new F1: mated searches are the positives; accepted mated = TP, false matches = FP, mated
searches not accepted = FN; precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN).

Choosing t:
- for a target FMR f: the smallest t with FMR(t) <= f, which maximises TMR under that bound: just above
  the (floor(f * n) + 1)-th largest of the n non-mated scores;
- for the best F1: F1 only changes at observed scores, so the thresholds with the best F1 form an
  interval between two neighbouring scores; t is its middle (the highest such interval on ties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from embedlab.data.splits import prepare_data
from embedlab.index.manifest import OpenSetRecord, utc_now
from embedlab.index.search import Searcher, load_pipeline
from embedlab.index.store import load_index, write_index, writer_lock
from embedlab.pipelines.index import read_gallery
from embedlab.retrieval.arrays import as_embedding_matrix, prepare_embeddings
from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES, iter_similarity_blocks
from embedlab.retrieval.exclusions import make_exclusions

Objective = Literal["target_fmr", "best_f1"]


@dataclass(frozen=True)
class OpenSetScores:
    """Per-search scores of a calibration set.

    mated_scores (Nm,) float32: top-1 similarity of each mated search; mated_correct (Nm,) bool: its
    top-1 item has the query's identity; non_mated_scores (Nn,) float32: best similarity to another
    identity (-inf when the gallery holds nothing else).
    """

    mated_scores: np.ndarray
    mated_correct: np.ndarray
    non_mated_scores: np.ndarray


@dataclass(frozen=True)
class OperatingPoint:
    """Rates at one threshold (definitions in the module docstring)."""

    threshold: float
    false_match_rate: float
    true_match_rate: float
    precision: float
    recall: float
    f1: float
    n_mated: int
    n_non_mated: int


def open_set_scores(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    exclude_index: np.ndarray | None = None,
    exclude_self: bool = False,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> OpenSetScores:
    """Mated and non-mated scores of queries (Nq, D) with labels (Nq,) against a gallery (Ng, D) with
    labels (Ng,), by cosine similarity; exclusions as in `embedlab.retrieval.make_exclusions`.

    The top-1 item follows the retrieval tie rule (the lowest gallery index among equal similarities).
    """
    q = prepare_embeddings(as_embedding_matrix(queries, "queries"), "cosine")
    g = q if exclude_self else prepare_embeddings(as_embedding_matrix(gallery, "gallery"), "cosine")
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    exclusions = make_exclusions(
        q.shape[0],
        g.shape[0],
        exclude_self=exclude_self,
        exclude_index=exclude_index,
        query_groups=query_groups,
        gallery_groups=gallery_groups,
    )
    mated: list[np.ndarray] = []
    correct: list[np.ndarray] = []
    non_mated: list[np.ndarray] = []
    for block in iter_similarity_blocks(q, g, exclusions, max_memory_bytes=max_memory_bytes):
        sims = block.similarities  # (rows, Ng), excluded items at -inf
        rows = np.arange(sims.shape[0])
        same = query_labels[block.start : block.stop, None] == gallery_labels[None, :]  # (rows, Ng)
        top = np.argmax(sims, axis=1)  # first maximum: the lowest index among ties
        has_mate = (same & np.isfinite(sims)).any(axis=1)
        mated.append(sims[rows, top][has_mate])
        correct.append(same[rows, top][has_mate])
        non_mated.append(np.where(same, -np.inf, sims).max(axis=1))
    return OpenSetScores(
        np.concatenate(mated).astype(np.float32),
        np.concatenate(correct).astype(bool),
        np.concatenate(non_mated).astype(np.float32),
    )


def operating_point(scores: OpenSetScores, threshold: float) -> OperatingPoint:
    """FMR, TMR, precision, recall and F1 when similarities >= threshold are accepted."""
    accepted = scores.mated_scores >= threshold
    true_positives = int(accepted.sum())
    true_matches = int((accepted & scores.mated_correct).sum())
    false_matches = int((scores.non_mated_scores >= threshold).sum())
    n_mated, n_non_mated = len(scores.mated_scores), len(scores.non_mated_scores)
    accepted_total = true_positives + false_matches
    return OperatingPoint(
        threshold=float(threshold),
        false_match_rate=false_matches / n_non_mated if n_non_mated else 0.0,
        true_match_rate=true_matches / n_mated if n_mated else 0.0,
        # Accepting nothing makes no wrong acceptance: precision 1 by the usual convention.
        precision=true_positives / accepted_total if accepted_total else 1.0,
        recall=true_positives / n_mated if n_mated else 0.0,
        # 2TP / (2TP + FP + FN) with FN = n_mated - TP
        f1=2 * true_positives / (true_positives + false_matches + n_mated)
        if n_mated + false_matches
        else 0.0,
        n_mated=n_mated,
        n_non_mated=n_non_mated,
    )


def threshold_for_fmr(non_mated_scores: np.ndarray, target_fmr: float) -> float:
    """The smallest threshold whose FMR on these non-mated scores (N,) is at most target_fmr."""
    if not 0.0 <= target_fmr < 1.0:
        raise ValueError(f"the target false-match rate must lie in [0, 1), got {target_fmr}")
    if len(non_mated_scores) == 0:
        raise ValueError("no non-mated searches to calibrate a false-match rate on")
    descending = np.sort(np.asarray(non_mated_scores, dtype=np.float32))[::-1]
    # The small epsilon keeps f * n = 29 from flooring to 28 when 0.29 * 100 is 28.999999999999996.
    allowed = math.floor(target_fmr * len(descending) + 1e-9)
    # Just above the first score that must be rejected (float32, the scores' own precision): that score
    # and every equal one fall below, every higher one stays accepted.
    return float(np.nextafter(descending[allowed], np.float32(np.inf)))


def threshold_for_best_f1(scores: OpenSetScores) -> float:
    """The middle of the threshold interval with the best known-vs-new F1 (the highest on ties)."""
    n_mated = len(scores.mated_scores)
    values = np.concatenate([scores.mated_scores, scores.non_mated_scores])
    positive = np.concatenate([np.ones(n_mated, bool), np.zeros(len(scores.non_mated_scores), bool)])
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError("no finite similarity to place a threshold at")
    values, positive = values[finite], positive[finite]
    order = np.argsort(-values, kind="stable")
    values, positive = values[order], positive[order]
    true_positives = np.cumsum(positive)
    false_positives = np.cumsum(~positive)
    # Accepting everything >= values[i] accepts through the last of a run of equal values.
    last_of_run = np.append(values[1:] != values[:-1], True)
    f1 = 2 * true_positives / (true_positives + false_positives + n_mated)
    candidates = np.flatnonzero(last_of_run)
    best = candidates[np.argmax(f1[candidates])]  # argmax takes the first: the highest interval
    if best + 1 == len(values):
        return float(values[best])
    # Every t in (next lower score, values[best]] accepts the same searches; the middle of that interval
    # leaves the widest margin on both sides for scores not seen in calibration.
    return float((np.float64(values[best]) + np.float64(values[best + 1])) / 2)


def choose_threshold(scores: OpenSetScores, objective: Objective, target_fmr: float) -> OperatingPoint:
    """The threshold for the objective, and its operating point on the same scores."""
    if len(scores.mated_scores) == 0:
        raise ValueError("no mated searches: the calibration queries share no identity with the gallery")
    if objective == "target_fmr":
        threshold = threshold_for_fmr(scores.non_mated_scores, target_fmr)
    else:
        threshold = threshold_for_best_f1(scores)
    return operating_point(scores, threshold)


# ------------------------------------------------------------------------------------------ pipeline


def calibrate_index(
    index_dir: str | Path,
    *,
    queries: Sequence[Path] | None = None,
    objective: Objective = "target_fmr",
    target_fmr: float = 0.01,
    run_dir: str | Path | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> OperatingPoint:
    """Pick the index's open-set threshold on calibration data and store it in its manifest.

    Calibration data: `queries` (a folder, CSV or image files with labels) searched against the index
    gallery, the same file excluded when it is in the gallery; or, by default, the validation split
    of the run that built the index, searched in itself as during training.

    The index's writers' lock is held from reading the index to writing it back, so an `index add` at
    the same time either finishes first (and is calibrated on) or waits: neither loses the other's work.
    """
    index_dir = Path(index_dir).absolute()
    with writer_lock(index_dir):
        return _calibrate_locked(index_dir, queries, objective, target_fmr, run_dir, batch_size, progress)


def _calibrate_locked(
    index_dir: Path,
    queries: Sequence[Path] | None,
    objective: Objective,
    target_fmr: float,
    run_dir: str | Path | None,
    batch_size: int | None,
    progress: bool,
) -> OperatingPoint:
    index = load_index(index_dir)
    run, pipeline = load_pipeline(index.manifest, index_dir, run_dir)
    searcher = Searcher(index, pipeline, index_dir)
    batch = batch_size or run.config.train.eval_batch_size
    workers = run.config.data.num_workers
    if queries:
        settings = index.manifest.preprocessing
        data = read_gallery(queries, settings.image_size, settings.channels)
        query_embeddings = searcher.expand(searcher.embed_images(data.images, batch, workers, progress))
        names = sorted({item.label for item in index.items} | {item.label for item in data.items})
        code = {name: i for i, name in enumerate(names)}
        position = {item.path: i for i, item in enumerate(index.items)}
        scores = open_set_scores(
            query_embeddings,
            np.array([code[item.label] for item in data.items]),
            np.asarray(index.embeddings),
            np.array([code[item.label] for item in index.items]),
            exclude_index=np.array([position.get(item.path, -1) for item in data.items]),
        )
        described = f"{data.source} ({len(data.items)} images) against the index gallery"
    else:
        postprocessing = index.manifest.postprocessing
        if postprocessing.step("dba") is not None or postprocessing.step("qe") is not None:
            raise ValueError(
                f"index {index_dir} expands queries or its gallery with its own gallery's neighbours, which "
                "the validation split does not have: calibrate with --queries (labelled images searched "
                "against the index)"
            )
        splits = prepare_data(run.config.data)
        query_embeddings = searcher.embed_images(splits.query, batch, workers, progress)
        groups = None if splits.query.groups is None else splits.query.groups.numpy()
        if splits.gallery is None:
            scores = open_set_scores(
                query_embeddings,
                splits.query.labels.numpy(),
                query_embeddings,
                splits.query.labels.numpy(),
                exclude_self=True,
                query_groups=groups,
                gallery_groups=groups,
            )
        else:
            gallery_groups = None if splits.gallery.groups is None else splits.gallery.groups.numpy()
            both = groups is not None and gallery_groups is not None
            scores = open_set_scores(
                query_embeddings,
                splits.query.labels.numpy(),
                searcher.embed_images(splits.gallery, batch, workers, progress),
                splits.gallery.labels.numpy(),
                query_groups=groups if both else None,
                gallery_groups=gallery_groups if both else None,
            )
        described = f"validation split of {run.run_dir} ({len(splits.query)} queries)"
    point = choose_threshold(scores, objective, target_fmr)
    record = OpenSetRecord(
        threshold=point.threshold,
        objective=objective,
        target_fmr=target_fmr if objective == "target_fmr" else None,
        false_match_rate=point.false_match_rate,
        true_match_rate=point.true_match_rate,
        precision=point.precision,
        recall=point.recall,
        f1=point.f1,
        n_mated=point.n_mated,
        n_non_mated=point.n_non_mated,
        calibration_data=described,
        calibrated_at=utc_now(),
    )
    write_index(index.with_open_set(record), index_dir, replace=True)
    return point
